"""icformer.compare: the comparisons the app shows, as plain data."""

from __future__ import annotations

import pytest

from icformer.compare import (
    compression_speedups, diff_counts, first_token_comparison, ratio, reconstruction_score, word_diff,
)


def test_ratio_is_none_when_there_is_nothing_to_compare():
    assert ratio(3.0, 1.5) == 2.0
    assert ratio(None, 1.0) is None and ratio(1.0, 0.0) is None and ratio(float("inf"), 1.0) is None


def test_compression_speedups_need_both_sides():
    both = compression_speedups(dict(compress_s=0.01, flops=1e9), dict(compress_s=0.3, flops=3.6e10))
    assert both == pytest.approx(dict(speedup=30.0, flops_ratio=36.0))
    assert compression_speedups(dict(compress_s=0.01), dict(compress_s=0.3)) == pytest.approx(dict(speedup=30.0))
    assert compression_speedups(dict(compress_s=0.0), dict(compress_s=0.3)) == {}


def test_first_token_comparison_compares_the_first_token_not_totals():
    cmp = first_token_comparison(dict(compress_s=0.1, prefill_s=0.1, decode_s=5.0, tokens_per_s=20.0),
                                 dict(prefill_s=0.8, decode_s=1.0, tokens_per_s=10.0))
    assert cmp.first_s == pytest.approx(0.2) and cmp.full_first_s == pytest.approx(0.8)
    assert cmp.sooner == pytest.approx(4.0) and (cmp.tokens_per_s, cmp.full_tokens_per_s) == (20.0, 10.0)
    assert first_token_comparison({}, dict(prefill_s=0.8)) is None


def test_word_diff_and_reconstruction_score():
    ops = word_diff("the cat sat on the mat", "the dog sat on the mat today")
    assert ops == [("same", ["the"]), ("missing", ["cat"]), ("added", ["dog"]), ("same", ["sat", "on", "the", "mat"]),
                   ("added", ["today"])]
    assert diff_counts(ops) == {"same": 5, "missing": 1, "added": 2}
    exact = reconstruction_score("the cat\n sat  on the mat", "the cat sat on the mat")
    assert exact.bleu == pytest.approx(1.0) and exact.counts == {"same": 6, "missing": 0, "added": 0}
    empty = reconstruction_score("the cat sat", "  ")
    assert empty.bleu == 0.0 and empty.counts["missing"] == 3
