"""Comparisons between methods, as plain data: speed-up ratios, a reconstruction's score, word diffs.

The app (and any other front end) only formats these; computing them here keeps one definition
of "how much faster" and "how close" for every caller.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

from .metrics import sentence_bleu

_WORD = re.compile(r"\S+")
DIFF_OPS = ("same", "missing", "added")  # in both texts / only in the original / only in the reconstruction


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing, zero or not finite (nothing to compare)."""
    if not numerator or not denominator or not math.isfinite(numerator) or not math.isfinite(denominator):
        return None
    return numerator / denominator


def compression_speedups(icformer: dict, icae: dict) -> dict[str, float]:
    """IC-Former against ICAE on one context: ``speedup`` (compression time) and ``flops_ratio``, each
    only when both sides measured it. Each side is a dict with ``compress_s`` and optionally ``flops``."""
    out = {}
    if (speedup := ratio(icae.get("compress_s"), icformer.get("compress_s"))) is not None:
        out["speedup"] = speedup
        if (flops := ratio(icae.get("flops"), icformer.get("flops"))) is not None:
            out["flops_ratio"] = flops
    return out


def first_token_s(timings: dict) -> float:
    """Time to an answer's first token: compression plus the LLM's prefill (decoding comes after)."""
    return timings.get("compress_s", 0.0) + timings.get("prefill_s", 0.0)


@dataclass(frozen=True)
class FirstTokenComparison:
    """A compressed method's answer against the full context's: answers differ in length, so
    the first token's time and the decoding speed are compared, never the totals."""

    first_s: float
    full_first_s: float
    sooner: float  # full_first_s / first_s: above 1, the compressed context's first token came sooner
    tokens_per_s: float
    full_tokens_per_s: float


def first_token_comparison(timings: dict, full: dict) -> FirstTokenComparison | None:
    """None when either answer has no first-token time to compare."""
    first, full_first = first_token_s(timings), first_token_s(full)
    sooner = ratio(full_first, first)
    if sooner is None:
        return None
    return FirstTokenComparison(first, full_first, sooner, timings.get("tokens_per_s") or 0.0,
                                full.get("tokens_per_s") or 0.0)


def word_diff(original: str, reconstructed: str) -> list[tuple[str, list[str]]]:
    """Word-level diff as ``[(op, words)]`` runs, op one of `DIFF_OPS`, in reading order
    (a replaced run: the original's words as "missing", then the produced ones as "added")."""
    a, b = _WORD.findall(original), _WORD.findall(reconstructed)
    ops: list[tuple[str, list[str]]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        runs = [("same", a[i1:i2])] if op == "equal" else [("missing", a[i1:i2]), ("added", b[j1:j2])]
        ops += [(name, words) for name, words in runs if words]
    return ops


def diff_counts(ops: list[tuple[str, list[str]]]) -> dict[str, int]:
    """Words per op of a `word_diff`."""
    counts = dict.fromkeys(DIFF_OPS, 0)
    for op, words in ops:
        counts[op] += len(words)
    return counts


@dataclass(frozen=True)
class ReconstructionScore:
    """How close a reconstruction is to its original: sentence BLEU-4 and the word diff."""

    bleu: float
    ops: list[tuple[str, list[str]]]
    counts: dict[str, int]


def reconstruction_score(original: str, reconstructed: str) -> ReconstructionScore:
    """BLEU against the original with its whitespace collapsed (the reconstruction is one flow of
    text); an empty reconstruction scores 0 without calling the metric."""
    original = " ".join(original.split())
    bleu = sentence_bleu(reconstructed, original) if reconstructed.strip() else 0.0
    ops = word_diff(original, reconstructed)
    return ReconstructionScore(bleu, ops, diff_counts(ops))
