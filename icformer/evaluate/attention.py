"""The paper's attention analysis (``icformer/attention.py``) of every IC-Former under test, per layer.

Cheap and deterministic, so it is recomputed every run on ATTENTION_WINDOWS seeded windows of one
chunk each (no samples to cache).
"""

from __future__ import annotations

import random
from dataclasses import asdict

from ..attention import analyse_ids
from .workspace import Workspace

ATTENTION_WINDOWS = 8


def attention_rows(ws: Workspace) -> list[dict]:
    """One row per (IC-Former method, layer); none without validation text."""
    if not ws.has("pretrain_valid.jsonl"):
        return []
    rng = random.Random(ws.settings.seed)
    size = ws.cc.icformer.config.chunk_size
    windows = [ws.text_source().window(size, rng) for _ in range(ATTENTION_WINDOWS)]
    rows = []
    for label, method in ws.methods.items():
        if method.method != "icformer":
            continue
        layers = analyse_ids(method.cc.target, method.model, windows)
        rows += [dict(method=label, layer=i, n=len(windows), trained=method.trained, **asdict(stats))
                 for i, stats in enumerate(layers, 1)]
    return rows
