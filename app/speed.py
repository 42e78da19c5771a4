"""The Speed tab's and the FLOPs column's calls into ``icformer.bench`` and ``icformer.flops``.

Each returns plain data (DataFrames, rows); a FLOPs number that cannot be computed is None, so a
FLOPs column never breaks a compression.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import pandas as pd

from icformer import bench, flops
from icformer.evaluate import paper_speed_rows

log = logging.getLogger(__name__)

QUICK_LENGTHS = [128, 256, 512, 1024, 2048]

__all__ = ["QUICK_LENGTHS", "bench_available", "committed_runs", "compression_flops", "flops_curve",
           "paper_speed_rows", "run_quick_benchmark"]


# ---------------------------------------------------------------------- FLOPs


def compression_flops(cc, method: str, num_tokens: int, batch: int = 1) -> float | None:
    """Exact matmul FLOPs to compress one ``num_tokens``-token context; None when unavailable
    (no such compressor loaded, the full context, or a count that failed)."""
    if num_tokens < 1 or method not in cc.methods() or method == "full":
        return None
    try:
        return float(flops.compression_flops(cc, method, num_tokens, batch))
    except Exception as err:  # a FLOPs column must never break compression
        log.warning("FLOPs unavailable for %s: %s", method, err)
    return None


def flops_curve(cc, lengths: list[int]) -> pd.DataFrame | None:
    """Compression FLOPs of each loaded compressor at each length, for the FLOPs chart."""
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
    """Whether this compressor can run the live benchmark, and if not, why (it compares with ICAE)."""
    if cc is not None and "icae" not in cc.methods():
        return False, "The live benchmark compares IC-Former with ICAE, and no ICAE is loaded."
    return True, ""


def run_quick_benchmark(cc, lengths: list[int], progress: Callable | None = None) -> pd.DataFrame:
    """``icformer.bench.run_benchmark`` in quick mode (batch 1) for ``lengths``: its rows as a DataFrame."""
    done = [0]

    def report(message: str) -> None:
        if progress is not None:
            progress(done[0] / max(len(lengths), 1), desc=f"Benchmarking {message}…")
        done[0] += 1

    # The full-context rows too (no compression time): their prefill and decode speed.
    return pd.DataFrame(bench.run_benchmark(cc, list(lengths), [1], quick=True, progress=report))


def committed_runs(directory: str | Path) -> list[tuple[dict, list[dict]]]:
    """Each benchmark run ``icformer.bench.read_runs`` finds in ``directory``: its meta (plus ``source``,
    the file stem) and its rows side by side. Tables of another shape are left to the chart."""
    return [(dict(meta, source=path.stem), rows) for path, meta, rows in bench.read_runs(directory)]
