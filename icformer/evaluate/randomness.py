"""Reconstruction against text randomness (the paper's Table 5): the sequences, at one fixed length.

Normal text, the same tokens reversed, a patterned sequence (a random start id, then +1 each step)
and uniformly random ids; reconstructed and scored as `reconstruction.py` scores its windows.
"""

from __future__ import annotations

import random
from typing import Callable

from ..results import RANDOMNESS_KINDS
from .windows import TextSource
from .workspace import Workspace


def allowed_ids(tokenizer, vocab: int) -> list[int]:
    """Every token id below `vocab` that is not a special token."""
    special = set(tokenizer.all_special_ids)
    return [i for i in range(vocab) if i not in special]


def randomness_ids(kind: str, length: int, rng: random.Random, text: TextSource, allowed: list[int]) -> list[int]:
    """Paper Table 5's four kinds of sequence; `rng` seeded per index, so all kinds share a window."""
    window = text.window(length, rng)
    start = rng.randrange(len(allowed))
    uniform = [allowed[rng.randrange(len(allowed))] for _ in range(length)]
    if kind == "normal":
        return window
    if kind == "reversed":
        return window[::-1]
    if kind == "patterned":
        return [allowed[(start + j) % len(allowed)] for j in range(length)]
    if kind == "random":
        return uniform
    raise ValueError(f"unknown randomness kind {kind!r}; choose from {RANDOMNESS_KINDS}")


def randomness_plan(ws: Workspace) -> list[tuple[str, dict, Callable[[], list[int]]]]:
    """(id, row fields, ids maker) of every randomness sequence of these settings."""
    plan = []
    n, cc = ws.randomness_length, ws.cc
    for i in range(ws.settings.randomness_samples):
        for kind in RANDOMNESS_KINDS:
            def make(kind=kind, i=i):
                vocab = min(len(cc.tokenizer), cc.llm.get_input_embeddings().num_embeddings)
                rng = random.Random(f"{ws.settings.seed}:randomness:{i}")
                return randomness_ids(kind, n, rng, ws.text_source(), allowed_ids(cc.tokenizer, vocab))
            plan.append((f"rand-{kind}-n{n}-{i:02d}", dict(kind="randomness", variant=kind), make))
    return plan
