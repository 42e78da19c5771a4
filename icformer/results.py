"""The results schema: what `python -m icformer evaluate` and `bench` write, and how it is read back.

One module so the writers (``icformer.evaluate``, ``icformer.bench``) and the reader (the app's
Evaluation and Speed tabs, ``app/results.py``) cannot drift apart: the file names, every table's
columns, the method labels and their display order, and one CSV/JSON writer and reader. A core
module: it imports nothing from the rest of the package.

Tables are CSV with a header row and a ``<stem>.json`` twin: ``{"table": stem, "rows": [...]}``,
or for benchmark runs ``{"meta": {...}, "rows": [...]}``. All scores are on a 0-1 scale, times in
seconds, memory in bytes; an empty cell is "not measured" (None). ``<score>_lo`` / ``<score>_hi``
are bootstrap 95% intervals of the mean. JSONL stores (one object a line) hold the samples.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any, Iterable, Sequence

from .files import atomic_write_text

# --------------------------------------------------------------------------- file names

# Summary tables (CSV + JSON twin) in the results directory.
QA_SUMMARY, QA_BY_TASK = "qa_summary", "qa_by_task"
REC_BY_LENGTH, REC_BY_RANDOMNESS = "reconstruction_by_length", "reconstruction_by_randomness"
PAPER_VS_OURS, ATTENTION_BY_LAYER = "paper_vs_ours", "attention_by_layer"
# qa_answers: one row per (question, method or floor), the resumable store; qa_samples: the same grouped
# per question for the app; reconstruction_samples: one row per (window, method), the store itself.
FILES = dict(qa_answers="qa_answers.jsonl", qa_samples="qa_samples.jsonl", rec_samples="reconstruction_samples.jsonl",
             meta="meta.json", run="run.json", readme="README.md")
# meta.json is shown whole above the app's tables, so the bulky run details go to run.json.
RUN_DETAILS = ("settings", "samples", "section_seconds", "bench_source", "earlier_invocations")
BENCH_DIR = "bench"  # benchmark runs, one table each, under the results directory
BENCH_STEM = "bench"  # what `python -m icformer bench --out DIR` writes: bench.csv/json/html
# bench/<stem>.csv of `evaluate`'s own benchmark: not "bench", which `bench --out <results>/bench` writes.
EVAL_BENCH_STEM = "evaluate"
CACHE_DIR = ".cache"  # samples of other settings, kept for reuse (git-ignored)

# --------------------------------------------------------------------------- labels

METHOD_ORDER = ("icformer", "icae", "full", "icformer-no-pretrain")  # the methods, as tables list them
NO_PRETRAIN = METHOD_ORDER[3]  # IC-Former fine-tuned without pre-training
NONE_FLOOR = "none"  # the no-context floor: the question alone
SWAPPED = "-swapped"  # suffix of a method's swapped-context floor: its vectors of another context
RANDOMNESS_KINDS = ("normal", "reversed", "patterned", "random")


def is_floor(label: str) -> bool:
    """Whether a QA row is a no-information floor rather than a method."""
    return label == NONE_FLOOR or str(label).endswith(SWAPPED)


def order_methods(labels: Iterable[str]) -> list[str]:
    """METHOD_ORDER first, other methods alphabetically, then the floors (`none`, then each `*-swapped`
    in its method's order): the one order every table and the app list methods in."""
    labels = list(dict.fromkeys(labels))
    first = [m for m in METHOD_ORDER if m in labels]
    own = first + sorted(m for m in labels if m not in first and not is_floor(m))
    swapped = [m + SWAPPED for m in own if m + SWAPPED in labels]
    floors = [m for m in labels if m == NONE_FLOOR] + swapped
    return own + floors + sorted(m for m in labels if is_floor(m) and m not in floors)


def above_floor(row: dict, floor: str, score: str = "f1") -> bool | None:
    """Whether a method's paired gain over a floor ("none" / "swapped") has an interval above zero
    (None: not measured): the rule the README's findings and the app's Compress & Ask note both read."""
    low = row.get(f"{score}_over_{floor}_lo")
    if low in (None, ""):
        return None
    return float(low) > 0


# --------------------------------------------------------------------------- columns


def with_interval(name: str) -> tuple[str, str, str]:
    """A mean's column and its bootstrap interval's."""
    return name, f"{name}_lo", f"{name}_hi"


# answer_ce: the reference answer's teacher-forced cross-entropy, nats/token (lower is better).
QA_SCORES = ("rouge1_p", "rouge1_r", "rouge1_f", "rouge2_p", "rouge2_r", "rouge2_f",
             "rougeL_p", "rougeL_r", "rougeL_f", "exact_match", "f1", "answer_ce")
QA_METRICS = ("rouge1_f", "rouge2_f", "rougeL_f", "exact_match", "f1")  # a qa_summary has at least one
LOWER_IS_BETTER = ("answer_ce",)
# Scored against the floors: `<score>_over_none` / `_over_swapped`, how far the method beats the floor
# (for answer_ce, the floor's cross-entropy minus the method's: the nats/token its vectors save).
SIGNAL_SCORES = ("f1", "rougeL_f", "answer_ce")
SIGNAL_COLUMNS = tuple(c for score in SIGNAL_SCORES for floor in ("none", "swapped")
                       for c in with_interval(f"{score}_over_{floor}"))
# qa_summary / qa_by_task: one row per (dataset, method or floor); `kind` "method" or "floor".
QA_COLUMNS = ("method", "dataset", "kind", "n", *(c for s in QA_SCORES for c in with_interval(s)), *SIGNAL_COLUMNS,
              "num_vectors", "k", "mean_context_tokens", "trained", "compress_s", "new_tokens")
REC_SCORES = (*with_interval("bleu"), "corpus_bleu", *with_interval("bleu_no_repeat"), *with_interval("ce"),
              *with_interval("ce_swapped"), *with_interval("ce_gap"), *with_interval("token_accuracy"))
# reconstruction_by_length: per (method, bucket upper edge in tokens); BLEU-4 of greedy decoding (the paper's)
# and of greedy decoding that never repeats an n-gram (bleu_no_repeat; None when the evaluation skipped it),
# CE in nats/token with the window's own vectors and with another window's (ce_swapped); ce_gap = ce_swapped
# - ce, paired per window.
REC_COLUMNS = ("method", "length_bucket", *REC_SCORES, "n", "num_vectors", "mean_tokens", "scored_tokens",
               "trained", "compress_s")
RAND_COLUMNS = ("method", "kind", "length", *REC_SCORES, "n", "num_vectors", "scored_tokens", "trained",
                "compress_s")
# paper_vs_ours: the paper's numbers (docs/paper.md) beside ours; the app adds ours/paper.
PVO_COLUMNS = ("table", "setting", "metric", "paper", "ours", "ours_lo", "ours_hi", "note", "trained")
ATTENTION_COLUMNS = ("method", "layer", "n", "order_correlation", "in_order", "window_mass", "uniform_window_mass",
                     "context_mass", "trained")
TABLE_COLUMNS = {QA_SUMMARY: QA_COLUMNS, QA_BY_TASK: QA_COLUMNS, REC_BY_LENGTH: REC_COLUMNS,
                 REC_BY_RANDOMNESS: RAND_COLUMNS, PAPER_VS_OURS: PVO_COLUMNS, ATTENTION_BY_LAYER: ATTENTION_COLUMNS}
# What the app needs of a table to show it (other columns are kept and shown).
REQUIRED_COLUMNS = {QA_SUMMARY: ("method",), REC_BY_LENGTH: ("method", "length_bucket", "bleu"),
                    PAPER_VS_OURS: ("setting", "metric", "paper", "ours"),
                    BENCH_STEM: ("method", "length", "compress_s")}
# bench.csv: one row per (batch_size, length, method); every row carries every column (None: not
# applicable). `icformer.bench.run_benchmark` documents each.
BENCH_COLUMNS = (
    "method", "batch_size", "length", "k", "L", "num_chunks", "num_vectors", "repeats",
    "compress_s", "prefill_s", "total_s", "speedup_vs_icae", "total_speedup_vs_full",
    "flops_paper", "flops_exact", "flops_measured", "flops_ratio_vs_icae", "prefill_flops_measured",
    "gflops_per_s", "matmul_gflops_per_s", "flop_bound_s", "time_over_flop_bound",
    "memory_bytes", "memory_kind", "device", "decode_tokens_per_s",
)

# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class TableFormat:
    """How a table's files are written: summaries round to `digits` significant digits (None: as
    Python writes the value, for raw measurements), CSV line ends, JSON indentation."""

    digits: int | None = 6
    lineterminator: str = "\n"
    json_indent: int = 1


SUMMARY = TableFormat()
MEASUREMENTS = TableFormat(digits=None, lineterminator="\r\n", json_indent=2)  # the csv module's defaults


def write_json(path: Path, value: Any, indent: int = 1) -> None:
    atomic_write_text(path, json.dumps(value, indent=indent, default=str) + "\n")


def _cell(value: Any, digits: int | None) -> Any:
    if value is None or (digits is not None and isinstance(value, float) and math.isnan(value)):
        return ""
    if digits is None:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return value


def write_table(out_dir: Path, stem: str, rows: list[dict[str, Any]], columns: Sequence[str] | None = None, *,
                meta: dict[str, Any] | None = None, fmt: TableFormat = SUMMARY) -> list[Path]:
    """``<stem>.csv`` and ``<stem>.json``; nothing (and old copies removed) when there are no rows.

    `columns` default to every key of the rows, in order of appearance. With `meta` the JSON is a
    benchmark run's ``{"meta", "rows"}`` (rows as given), else ``{"table", "rows"}`` (rows cut to `columns`).
    """
    paths = [out_dir / f"{stem}.csv", out_dir / f"{stem}.json"]
    if not rows:
        for path in paths:
            path.unlink(missing_ok=True)
        return []
    if columns is None:
        columns = list(dict.fromkeys(c for row in rows for c in row))
    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator=fmt.lineterminator)
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c), fmt.digits) for c in columns})
    atomic_write_text(paths[0], buffer.getvalue())
    body = ({"meta": meta, "rows": rows} if meta is not None
            else {"table": stem, "rows": [{c: row.get(c) for c in columns} for row in rows]})
    write_json(paths[1], body, fmt.json_indent)
    return paths


# --------------------------------------------------------------------------- reading

_MISSING = {"", "nan", "NaN", "NA", "N/A", "n/a", "null", "None", "<NA>", "-nan"}
_BOOLS = {"true": True, "false": False, "True": True, "False": False, "TRUE": True, "FALSE": False}


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def _typed_column(cells: list[str]) -> list[Any]:
    """A CSV column's cells as numbers, booleans or text, decided for the whole column (as pandas does)."""
    present = [c for c in cells if c not in _MISSING]
    if present and all(c in _BOOLS for c in present):
        return [None if c in _MISSING else _BOOLS[c] for c in cells]
    numbers = [_number(c) for c in present]
    if present and all(n is not None for n in numbers):
        as_float = any(isinstance(n, float) for n in numbers)
        return [None if c in _MISSING else (float(c) if as_float else int(c)) for c in cells]
    return [None if c in _MISSING else c for c in cells]


def read_csv_rows(path: Path) -> list[dict[str, Any]]:
    """A CSV written by `write_table` (or by hand) as typed rows; empty cells are None."""
    with open(path, encoding="utf-8", newline="") as handle:
        try:
            reader = csv.reader(handle)
            header = next(reader, None)
            cells = [row for row in reader if row]
        except csv.Error as err:
            raise ValueError(f"{path.name}: {err}") from err
    if header is None:
        return []
    if any(len(row) > len(header) for row in cells):
        raise ValueError(f"{path.name}: a row has more cells than the header")
    columns = [_typed_column([row[i] if i < len(row) else "" for row in cells]) for i in range(len(header))]
    return [{name: columns[i][r] for i, name in enumerate(header)} for r in range(len(cells))]


def read_table(directory: Path, stem: str) -> list[dict[str, Any]] | None:
    """``<stem>.csv``, else ``<stem>.json`` (a list of rows, ``{"rows": [...]}`` or one object), as rows;
    None when neither exists. Raises OSError or ValueError on an unreadable file."""
    csv_path, json_path = directory / f"{stem}.csv", directory / f"{stem}.json"
    if csv_path.is_file():
        return read_csv_rows(csv_path)
    if not json_path.is_file():
        return None
    raw = json.loads(json_path.read_text(encoding="utf-8"))
    rows = raw.get("rows", raw) if isinstance(raw, dict) else raw
    return rows if isinstance(rows, list) else [rows]


def read_json(path: Path) -> Any:
    """A JSON file's value; raises OSError or ValueError."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
