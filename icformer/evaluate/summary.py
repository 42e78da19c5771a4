"""Statistics shared by the tasks' summaries (means with bootstrap intervals), and our numbers beside the paper's."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable

from ..metrics import bootstrap_ci, bootstrap_ratio_ci
from ..results import QA_SCORES
from .paper import PAPER_NUMBERS


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that were measured (None and NaN left out); None when none was."""
    kept = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(kept) / len(kept) if kept else None


def with_interval(summary: dict[str, Any], name: str, values: list[float], resamples: int, seed: int) -> None:
    """`summary[name]` = the mean of `values`, and `name_lo` / `name_hi` its bootstrap 95% interval."""
    kept = [float(v) for v in values if v is not None]
    summary[name] = mean(kept)
    summary[f"{name}_lo"], summary[f"{name}_hi"] = bootstrap_ci(kept, resamples=resamples, seed=seed)


def _qa_numbers(qa: list[dict], samples: list[dict], ours: dict, intervals: dict, resamples: int, seed: int) -> None:
    for row in qa:
        for metric in QA_SCORES:
            if row.get(metric) is not None:
                ours[f"qa:{row['method']}:{metric}"] = row[metric]
                intervals[f"qa:{row['method']}:{metric}"] = (row.get(f"{metric}_lo"), row.get(f"{metric}_hi"))
    for a, b in (("icformer", "icae"), ("icformer", "full")):
        for metric in ("rouge1_f", "rouge2_f", "rougeL_f"):
            x, y = ours.get(f"qa:{a}:{metric}"), ours.get(f"qa:{b}:{metric}")
            if x is not None and y:
                key = f"qa-ratio:{a}:{b}:{metric}"
                ours[key] = x / y
                pairs = [(s["answers"][a][metric], s["answers"][b][metric]) for s in samples
                         if a in s["answers"] and b in s["answers"]]
                intervals[key] = bootstrap_ratio_ci([p[0] for p in pairs], [p[1] for p in pairs],
                                                    resamples=resamples, seed=seed)


def _bench_numbers(bench: list[dict], ours: dict) -> None:
    memory: dict[str, list[float]] = defaultdict(list)
    for row in bench:
        prefix = f"bench:{row['batch_size']}x{row['length']}:{row['method']}"
        for column in ("compress_s", "speedup_vs_icae", "total_speedup_vs_full"):
            if row.get(column) not in (None, ""):
                ours[f"{prefix}:{column}"] = float(row[column])
        if row.get("memory_kind") == "cuda_peak" and row.get("memory_bytes"):
            memory[row["method"]].append(float(row["memory_bytes"]) / 1e9)
    for method, values in memory.items():
        ours[f"memory:{method}:min"], ours[f"memory:{method}:max"] = min(values), max(values)


def our_numbers(qa: list[dict], rec: list[dict], rand: list[dict], bench: list[dict], flops: dict[str, float],
                samples: list[dict], *, resamples: int, seed: int) -> tuple[dict, dict]:
    """(ours: key -> value, intervals: key -> (low, high)) for the keys of PAPER_NUMBERS."""
    ours: dict[str, float] = dict(flops)
    intervals: dict[str, tuple] = {}
    _qa_numbers(qa, samples, ours, intervals, resamples, seed)
    for prefix, rows, group in (("rec", rec, "length_bucket"), ("rand", rand, "kind")):
        for row in rows:
            key = f"{prefix}:{row['method']}:{row[group]}"
            ours[key], intervals[key] = row["bleu"], (row.get("bleu_lo"), row.get("bleu_hi"))
    _bench_numbers(bench, ours)
    return ours, intervals


def paper_vs_ours(ours: dict[str, float], notes: dict[str, str], trained: dict[str, bool],
                  intervals: dict[str, tuple] | None = None) -> list[dict]:
    """PAPER_NUMBERS beside ours; `ours_lo`/`ours_hi` are bootstrap intervals of our quality means
    (speed, FLOPs and memory are single measurements or formulas: none)."""
    intervals = intervals or {}
    rows = []
    for table, setting, metric, paper, key, depends in PAPER_NUMBERS:
        value = ours.get(key) if key else None
        flags = [trained.get(m) for m in depends]
        is_trained = None if not depends or None in flags or value is None else all(flags)
        if key is None:
            note = "no counterpart here (one k per checkpoint)"
        elif value is None:
            note = notes.get(f"{table}:missing", "not measured in this run")
        else:
            note = notes.get(table, "") + ("; random weights (untrained)" if is_trained is False else "")
        low, high = intervals.get(key, (None, None)) if value is not None else (None, None)
        rows.append(dict(table=table, setting=setting, metric=metric, paper=paper, ours=value, ours_lo=low,
                         ours_hi=high, note=note, trained=is_trained))
    return rows
