"""Reading committed evaluation results for the Evaluation and Speed tabs.

Where: ``build_demo(results_dir=...)``, else ``$ICFORMER_RESULTS``, else ``assets/results/``.
Every file is optional; the tab shows what exists and names what it could not read. What each
file holds, and the reader used here: ``icformer/results.py``. Any other ``*.csv`` directly in the
results directory is shown as an extra table.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from icformer import results as schema
from icformer.defaults import REPO_DIR, RESULTS_ENV
from icformer.files import read_jsonl_lenient
from icformer.results import NONE_FLOOR, order_methods
from icformer.results import SWAPPED as SWAPPED_FLOOR


log = logging.getLogger(__name__)

DEFAULT_RESULTS_DIR = REPO_DIR / "assets" / "results"
QA_METRICS = list(schema.QA_METRICS)
KNOWN_TABLES = (schema.QA_SUMMARY, schema.REC_BY_LENGTH, schema.PAPER_VS_OURS)
MAX_SAMPLES = 20_000


def results_dir(explicit: str | Path | None = None) -> Path:
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(RESULTS_ENV)
    return Path(env) if env else DEFAULT_RESULTS_DIR


@dataclass
class Results:
    directory: Path
    meta: dict[str, Any] = field(default_factory=dict)
    qa_summary: pd.DataFrame | None = None
    reconstruction: pd.DataFrame | None = None
    paper_vs_ours: pd.DataFrame | None = None
    samples: list[dict] = field(default_factory=list)
    extra_tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return (
            self.qa_summary is None and self.reconstruction is None and self.paper_vs_ours is None
            and not self.samples and not self.extra_tables
        )

    @property
    def datasets(self) -> list[str]:
        return sorted({str(s.get("dataset", "all")) for s in self.samples})

    @property
    def sample_methods(self) -> list[str]:
        found: dict[str, None] = {}
        for s in self.samples:
            for m in s.get("answers", {}):
                found.setdefault(m, None)
        return order_methods(found)


# ---------------------------------------------------------------------- low-level readers


def read_table(directory: Path, stem: str, problems: list[str] | None = None) -> pd.DataFrame | None:
    """``<stem>.csv`` or ``<stem>.json`` in ``directory`` as a DataFrame, or None."""
    try:
        rows = schema.read_table(directory, stem)
    except (OSError, ValueError) as err:
        if problems is not None:
            problems.append(f"{stem}: {err}")
        return None
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    return None if frame.empty else frame.where(frame.notna(), float("nan"))  # missing cells NaN, as pandas reads them


def _require(frame: pd.DataFrame | None, columns: tuple[str, ...], name: str, problems: list[str]):
    if frame is None:
        return None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        problems.append(f"{name}: missing columns {missing}")
        return None
    return frame


_SAMPLES_CACHE: dict[tuple[str, float, int], tuple[list[dict], int]] = {}  # rows, unreadable lines


def read_samples(path: Path, problems: list[str] | None = None) -> list[dict]:
    """``qa_samples.jsonl`` rows (cached by modification time); bad lines are counted, not fatal."""
    if not path.is_file():
        return []
    stat = path.stat()
    key = (str(path), stat.st_mtime, stat.st_size)
    if key not in _SAMPLES_CACHE:
        _SAMPLES_CACHE.clear()
        _SAMPLES_CACHE[key] = _parse_samples(path)
    rows, bad = _SAMPLES_CACHE[key]
    if bad and problems is not None:  # on every read, cached or not
        problems.append(f"qa_samples.jsonl: skipped {bad} unreadable line(s)")
    return rows


def _parse_samples(path: Path) -> tuple[list[dict], int]:
    rows, bad = read_jsonl_lenient(path, limit=MAX_SAMPLES,
                                  accept=lambda row: isinstance(row, dict) and isinstance(row.get("answers"), dict))
    for i, row in enumerate(rows):
        row.setdefault("id", f"sample-{i}")
        row.setdefault("dataset", "all")
    return rows, bad


# ---------------------------------------------------------------------- public API


def load_results(directory: str | Path | None = None) -> Results:
    root = results_dir(directory)
    res = Results(directory=root)
    if not root.is_dir():
        return res
    problems = res.problems
    meta_path = root / schema.FILES["meta"]
    if meta_path.is_file():
        try:
            meta = schema.read_json(meta_path)
            res.meta = meta if isinstance(meta, dict) else {"meta": meta}
        except (OSError, ValueError) as err:
            problems.append(f"meta.json: {err}")

    qa = _require(read_table(root, "qa_summary", problems), schema.REQUIRED_COLUMNS[schema.QA_SUMMARY], "qa_summary",
                  problems)
    if qa is not None:
        if not any(m in qa.columns for m in QA_METRICS):
            problems.append(f"qa_summary: none of the metric columns {QA_METRICS}")
            qa = None
        else:
            if "dataset" not in qa.columns:
                qa.insert(0, "dataset", "all")
            qa["method"] = qa["method"].astype(str)
    res.qa_summary = qa

    rec = _require(
        read_table(root, "reconstruction_by_length", problems), schema.REQUIRED_COLUMNS[schema.REC_BY_LENGTH],
        "reconstruction_by_length", problems,
    )
    if rec is not None:
        rec = rec.assign(method=rec["method"].astype(str))
        rank = {m: i for i, m in enumerate(order_methods(set(rec["method"])))}
        rec = rec.sort_values(["method", "length_bucket"], key=lambda col: col.map(rank) if col.name == "method" else col)
    res.reconstruction = rec

    pvo = _require(
        read_table(root, "paper_vs_ours", problems), schema.REQUIRED_COLUMNS[schema.PAPER_VS_OURS], "paper_vs_ours",
        problems
    )
    if pvo is not None:
        pvo = pvo.copy()
        paper = pd.to_numeric(pvo["paper"], errors="coerce")
        ours = pd.to_numeric(pvo["ours"], errors="coerce")
        pvo["ours/paper"] = (ours / paper).round(3)
    res.paper_vs_ours = pvo

    res.samples = read_samples(root / schema.FILES["qa_samples"], problems)

    for path in sorted(root.glob("*.csv")):
        if path.stem in KNOWN_TABLES:
            continue
        frame = read_table(root, path.stem, problems)
        if frame is not None:
            res.extra_tables[path.stem] = frame
    return res


def sample_score(sample: dict, method: str, metric: str) -> float | None:
    value = sample.get("answers", {}).get(method, {}).get(metric)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def filter_samples(
    samples: list[dict],
    dataset: str | None = None,
    method: str | None = None,
    metric: str = "rougeL_f",
    min_score: float = 0.0,
    max_score: float = 1.0,
) -> list[dict]:
    """Samples of ``dataset`` ("All"/None: any) whose ``method`` ``metric`` lies in [min, max]."""
    out = []
    for s in samples:
        if dataset and dataset != "All" and str(s.get("dataset")) != dataset:
            continue
        if method and method != "All":
            score = sample_score(s, method, metric)
            if score is None or not (min_score <= score <= max_score):
                continue
        out.append(s)
    return out


def load_bench_results(directory: str | Path | None) -> tuple[pd.DataFrame | None, list[str]]:
    """All committed benchmark tables under ``<results>/bench/`` normalised to method, length, compress_s."""
    problems: list[str] = []
    if directory is None:
        return None, problems
    root = Path(directory)
    if not root.is_dir():
        return None, problems
    frames = []
    for path in sorted(list(root.glob("*.csv")) + list(root.glob("*.json"))):
        if path.suffix == ".json" and path.with_suffix(".csv").exists():
            continue
        frame = read_table(root, path.stem, problems)
        if frame is None:
            continue
        frame = normalise_bench(frame)
        if frame is None:
            problems.append(f"bench/{path.name}: needs columns method, length and compress_s")
            continue
        frames.append(frame.assign(source=path.stem))
    if not frames:
        return None, problems
    return pd.concat(frames, ignore_index=True), problems


def load_bench_meta(directory: str | Path | None) -> list[dict]:
    """The ``meta`` objects of ``bench/*.json`` files written as ``{"meta": {...}, "rows": [...]}``."""
    metas = []
    root = Path(directory) if directory is not None else None
    if root is None or not root.is_dir():
        return metas
    for path in sorted(root.glob("*.json")):
        try:
            raw = schema.read_json(path)
        except (OSError, ValueError):
            continue
        if isinstance(raw, dict) and isinstance(raw.get("meta"), dict):
            metas.append(dict(raw["meta"], source=path.stem))
    return metas


def normalise_bench(frame: pd.DataFrame) -> pd.DataFrame | None:
    """``method`` as text, ``length`` and ``compress_s`` as numbers; None if one of them is missing."""
    if not set(schema.REQUIRED_COLUMNS[schema.BENCH_STEM]) <= set(frame.columns):
        return None
    frame = frame.copy()
    frame["method"] = frame["method"].astype(str)
    frame["length"] = pd.to_numeric(frame["length"], errors="coerce")
    frame["compress_s"] = pd.to_numeric(frame["compress_s"], errors="coerce")
    return frame.dropna(subset=["length", "compress_s"])


# ---------------------------------------------------------------------- shaping for the Evaluation tab

# Run details worth a glance above the tables, in this order; machine paths are left out.


def sample_table(samples: list[dict], methods: list[str], metric: str) -> pd.DataFrame:
    """The per-sample browser's rows: id, question, reference, each method's and the `none` floor's `metric`,
    and each compressor's gain over the better of its floors (positive: it answered better than from no or
    the wrong context; the swapped floors' own scores are in the sample's answer table). Headers and texts
    are short so every column fits a 1400-px window."""
    compressors = [m for m in methods if m + SWAPPED_FLOOR in methods]
    rows = []
    for s in samples:
        row: dict[str, Any] = {"id": s["id"], "question": _clip(s.get("question"), 44),
                               "reference": _clip(s.get("reference"), 24)}
        for m in (m for m in methods if not m.endswith(SWAPPED_FLOOR)):
            score = sample_score(s, m, metric)
            row[_short(m)] = round(score, 2) if score is not None else None
        for m in compressors:
            own = sample_score(s, m, metric)
            floors = [sample_score(s, f, metric) for f in (NONE_FLOOR, m + SWAPPED_FLOOR)]
            floors = [f for f in floors if f is not None]
            row[f"{_short(m)} gain"] = round(own - max(floors), 2) if own is not None and floors else None
        rows.append(row)
    return pd.DataFrame(rows)


_SHORT = {"icformer": "IC-F", "icae": "ICAE", "full": "full", "icformer-no-pretrain": "IC-F np", NONE_FLOOR: "none"}


def _short(method: str) -> str:
    if method.endswith(SWAPPED_FLOOR):
        return _short(method[: -len(SWAPPED_FLOOR)]) + " swap"
    return _SHORT.get(method, method)


def _clip(text: Any, limit: int) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def find_sample(res: Results, sample_id: str | None) -> dict | None:
    return next((s for s in res.samples if str(s.get("id")) == str(sample_id)), None)


def interval_text(row: pd.Series, name: str) -> str:
    """`name` of a summary row as "mean [low, high]" (its 95% interval), or "–" when not measured."""
    value, low, high = (pd.to_numeric(pd.Series([row.get(c)]), errors="coerce").iloc[0]
                        for c in (name, f"{name}_lo", f"{name}_hi"))
    if pd.isna(value):
        return "–"
    return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if pd.notna(low) and pd.notna(high) else "")


def _compact(frame: pd.DataFrame | None, columns: list[str], with_interval: tuple[str, ...]) -> pd.DataFrame | None:
    """The `columns` of `frame` that exist, those in `with_interval` written "mean [low, high]"."""
    if frame is None:
        return None
    out = pd.DataFrame(index=frame.index)
    for column in columns:
        if column in with_interval and f"{column}_lo" in frame.columns:
            out[column] = [interval_text(row, column) for _, row in frame.iterrows()]
        elif column in frame.columns:
            out[column] = frame[column]
    return out.reset_index(drop=True)


_QA_SHOWN = ["dataset", "method", "kind", "n", "f1", "exact_match", "rougeL_f", "f1_over_none", "f1_over_swapped",
             "answer_ce", "answer_ce_over_swapped", "num_vectors", "trained"]
_QA_INTERVALS = ("f1", "exact_match", "rougeL_f", "f1_over_none", "f1_over_swapped", "answer_ce",
                 "answer_ce_over_swapped")


def qa_table(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    """qa_summary / qa_by_task as shown: the headline scores with their intervals, the gains over the floors."""
    return _compact(frame, _QA_SHOWN, _QA_INTERVALS)


def paper_table(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    """paper_vs_ours as shown: ours with its interval where it has one."""
    if frame is None:
        return None
    return _compact(frame, [c for c in frame.columns if c not in ("ours_lo", "ours_hi")], ("ours",))
