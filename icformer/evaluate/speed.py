"""Compression speed and FLOPs (the paper's Tables 1 and 2): the benchmark section, from ``icformer.bench``.

Its rows are measured here, taken from a ``python -m icformer bench`` run (``--bench-from``), or
reused from an earlier run of the same settings (``bench/evaluate.json``, keyed by what they depend on).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..bench import environment, read_runs, run_benchmark
from ..compressor import ContextCompressor
from ..flops import icae_flops, icformer_flops, paper_icae_flops, paper_icformer_flops
from ..results import BENCH_COLUMNS, BENCH_DIR, CACHE_DIR, EVAL_BENCH_STEM, read_json, write_table
from .paper import LLAMA2_7B
from .store import settings_key
from .workspace import Workspace


def flops_numbers(cc: ContextCompressor) -> dict[str, float]:
    """Analytic compression FLOPs at 512 tokens for our model, and the paper's formulas at its sizes."""
    out = {
        "flops:icae:llama2": float(paper_icae_flops(**LLAMA2_7B, layers=32)),
        "flops:icformer:llama2": float(paper_icformer_flops(**LLAMA2_7B, layers=3)),
        "flops:icformer": float(icformer_flops(cc.icformer.config, 512).paper),
    }
    if cc.icae is not None:
        out["flops:icae"] = float(icae_flops(cc.icae, 512).paper)
        out["flops:ratio"] = out["flops:icae"] / out["flops:icformer"]
    return out


@dataclass
class BenchRows:
    """The benchmark rows of this run, where they came from (relative to the results folder) and,
    when there are none, why."""

    rows: list[dict] = field(default_factory=list)
    source: str | None = None
    note: str = ""


def bench_plan(ws: Workspace) -> dict[str, Any]:
    s = ws.settings
    if s.bench_quick:
        return dict(quick=True, lengths=None, batch_sizes=None, repeats=None, max_batch_tokens=None)
    return dict(quick=False, lengths=list(s.bench_lengths), batch_sizes=list(s.bench_batch_sizes),
                repeats=s.bench_repeats, max_batch_tokens=s.bench_max_batch_tokens)


def bench_key(ws: Workspace) -> str:
    models = {k: ws.fingerprints[k] for k in ("icformer", "icae") if k in ws.fingerprints}
    return settings_key(dict(section="bench", llm=ws.cc.target.fingerprint, plan=bench_plan(ws), models=models,
                             threads=torch.get_num_threads(), device=str(ws.cc.device)))


def _saved_key(saved: Path) -> str:
    try:
        return read_json(saved)["meta"].get("eval_key") or "external"
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return "unreadable"


def _read_from(ws: Workspace, bench: BenchRows, source: Path) -> None:
    bench.rows = read_json(source)["rows"]
    ws.counts["bench"] = f"{len(bench.rows)} rows read from {source}"
    bench.source = ws.relative(source)


def open_bench(ws: Workspace, bench_from: str | Path | None) -> BenchRows:
    """Rows from `bench_from`, or saved by an earlier run of these settings; other rows are moved aside."""
    bench = BenchRows()
    source = Path(bench_from).resolve() if bench_from is not None else None
    saved = ws.out / BENCH_DIR / f"{EVAL_BENCH_STEM}.json"
    if saved.is_file() and saved.resolve() != source:
        key = _saved_key(saved)
        if key == bench_key(ws) and not (source and source.is_file()):
            bench.rows = read_json(saved).get("rows", [])
            ws.counts["bench"] = f"{len(bench.rows)} rows (reused)"
            bench.source = ws.relative(saved)
            return bench
        aside = ws.out / CACHE_DIR / BENCH_DIR
        aside.mkdir(parents=True, exist_ok=True)
        for path in (saved, saved.with_suffix(".csv")):
            if path.is_file():
                os.replace(path, aside / f"{EVAL_BENCH_STEM}.{key}{path.suffix}")
    if source is not None and source.is_file():
        _read_from(ws, bench, source)
        ws.counts["bench"] = f"{len(bench.rows)} rows read from {bench_from}"
    return bench


def run_bench(ws: Workspace, bench: BenchRows, bench_from: str | Path | None) -> None:
    """Take the rows from `bench_from` when it exists by now (copied into the results folder), else measure."""
    out = ws.out / BENCH_DIR
    source = Path(bench_from) if bench_from is not None else None
    if source is not None and source.is_file():
        _read_from(ws, bench, source)
        if source.resolve().parent != out.resolve():  # keep the results folder self-contained
            meta = {**read_json(source).get("meta", {}), "source": str(source)}
            write_table(out, EVAL_BENCH_STEM, bench.rows, meta=meta)
            bench.source = ws.relative(out / f"{EVAL_BENCH_STEM}.json")
        return
    if bench.rows:
        return
    if ws.cc.icae is None:
        bench.note = "benchmark not run: it compares IC-Former with ICAE, and no ICAE is loaded"
        return
    plan = bench_plan(ws)
    with ws.bar(1, "bench") as bar:
        rows = run_benchmark(ws.cc, plan["lengths"], plan["batch_sizes"], plan["repeats"], quick=plan["quick"],
                             max_batch_tokens=plan["max_batch_tokens"], seed=ws.settings.seed,
                             progress=bar.set_postfix_str)
        bar.update(1)
    meta = {**environment(ws.cc), "eval_key": bench_key(ws), "plan": plan}
    write_table(out, EVAL_BENCH_STEM, rows, BENCH_COLUMNS, meta=meta)
    bench.rows = rows
    ws.counts["bench"] = f"{len(rows)} rows"
    bench.source = ws.relative(out / f"{EVAL_BENCH_STEM}.json")


def other_bench_runs(ws: Workspace, bench: BenchRows) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """Benchmark runs committed beside this evaluation's own (e.g. on a GPU): (file, meta, summarised rows)."""
    own = (ws.out / bench.source).resolve() if bench.source else None
    return [(ws.relative(path), meta, rows) for path, meta, rows in read_runs(ws.out / BENCH_DIR)
            if path.resolve() != own]
