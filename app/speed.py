"""Bridges to ``icformer.bench`` and ``icformer.flops`` for the Speed tab and the FLOPs column.

The UI goes through these functions only, so it degrades to a message (instead of failing)
in a build where either module is missing or its API has moved on.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Callable

import pandas as pd

log = logging.getLogger(__name__)

QUICK_LENGTHS = [128, 256, 512, 1024, 2048]


def _module(name: str):
    try:
        return importlib.import_module(f"icformer.{name}")
    except ImportError:
        return None


# ---------------------------------------------------------------------- FLOPs


def compression_flops(cc, method: str, num_tokens: int, batch: int = 1) -> float | None:
    """Exact matmul FLOPs to compress one ``num_tokens``-token context; None when unavailable."""
    mod = _module("flops")
    if mod is None or num_tokens < 1:
        return None
    try:
        if method == "icformer":
            return float(mod.icformer_flops(cc.icformer.config, num_tokens, batch).exact)
        if method == "icae" and getattr(cc, "icae", None) is not None:
            return float(mod.icae_flops(cc.icae, num_tokens, batch).exact)
    except Exception as err:  # a FLOPs column must never break compression
        log.warning("FLOPs unavailable for %s: %s", method, err)
    return None


def flops_curve(cc, lengths: list[int]) -> pd.DataFrame | None:
    rows = [
        dict(method=method, length=int(n), flops=value)
        for method in ("icformer", "icae")
        if method in cc.methods()
        for n in lengths
        if (value := compression_flops(cc, method, int(n))) is not None
    ]
    return pd.DataFrame(rows) if rows else None


# ---------------------------------------------------------------------- benchmark


def bench_available(cc=None) -> tuple[bool, str]:
    mod = _module("bench")
    if mod is None or not hasattr(mod, "run_benchmark"):
        return False, "The live benchmark needs icformer.bench, which this build does not include."
    if cc is not None and "icae" not in cc.methods():
        return False, "The live benchmark compares IC-Former with ICAE, and no ICAE is loaded."
    return True, ""


def run_quick_benchmark(cc, lengths: list[int], progress: Callable | None = None) -> pd.DataFrame:
    """``icformer.bench.run_benchmark`` in quick mode (batch 1) for ``lengths``: its rows as a DataFrame."""
    mod = _module("bench")
    done = [0]

    def report(message: str) -> None:
        if progress is not None:
            progress(done[0] / max(len(lengths), 1), desc=f"Benchmarking {message}…")
        done[0] += 1

    rows = mod.run_benchmark(cc, list(lengths), [1], quick=True, progress=report)
    frame = pd.DataFrame(rows)
    if not {"method", "length", "compress_s"} <= set(frame.columns):
        raise RuntimeError("icformer.bench.run_benchmark returned rows without method, length and compress_s")
    return frame  # the full-context rows too (no compression time): their prefill and decode speed


def committed_runs(directory: str | Path) -> list[tuple[dict, list[dict]]]:
    """Each benchmark run ``icformer.bench.read_runs`` finds in ``directory``: its meta (plus ``source``,
    the file stem) and its rows side by side. Tables of another shape are left to the chart."""
    mod = _module("bench")
    if mod is None or not hasattr(mod, "read_runs"):
        return []
    return [(dict(meta, source=path.stem), rows) for path, meta, rows in mod.read_runs(directory)]


def paper_speed_rows() -> dict[tuple[int, int], dict[str, float]]:
    """The paper's Table 1 by (batch, length), from ``icformer.evaluate``; empty when unavailable."""
    mod = _module("evaluate")
    return mod.paper_speed_rows() if mod is not None and hasattr(mod, "paper_speed_rows") else {}
