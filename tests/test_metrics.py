"""Tests for icformer.metrics (local, offline `evaluate` metric modules)."""

import collections
import math
import os
import socket

import pytest

from icformer import metrics
from icformer.metrics import (
    bleu_score,
    load_metric,
    rouge_scores,
    sentence_bleu,
    squad_scores,
)

IDENTICAL = "the quick brown fox jumps over the lazy dog"
DISJOINT_PRED = "alpha beta gamma delta"
DISJOINT_REF = "one two three four"


# --------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------


def test_unknown_metric_raises_value_error():
    with pytest.raises(ValueError, match="unknown metric"):
        load_metric("meteor")
    with pytest.raises(ValueError):
        load_metric("")
    with pytest.raises(ValueError):
        metrics.metric_path("rouge/../bleu")


def test_load_metric_is_cached_and_local():
    import evaluate

    for name in metrics.AVAILABLE_METRICS:
        module = load_metric(name)
        assert isinstance(module, evaluate.EvaluationModule)
        assert module is load_metric(name.upper())  # lru_cache, case-insensitive
        path = metrics.metric_path(name)
        assert os.path.isabs(path) and os.path.isfile(path)


def test_loading_needs_no_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access attempted during metric loading")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    metrics.clear_metric_cache()
    try:
        for name in metrics.AVAILABLE_METRICS:
            load_metric(name)
        assert squad_scores(["x"], ["x"])["exact_match"] == 1.0
        assert rouge_scores(["x y"], ["x y"])["rouge1_f1"] == 1.0
        assert bleu_score([IDENTICAL], [IDENTICAL]) == pytest.approx(1.0)
    finally:
        metrics.clear_metric_cache()
    assert os.environ.get("HF_EVALUATE_OFFLINE")


# --------------------------------------------------------------------------
# identical / disjoint
# --------------------------------------------------------------------------


def test_identical_strings_score_one():
    r = rouge_scores([IDENTICAL], [IDENTICAL])
    for t in ("rouge1", "rouge2", "rougeL"):
        assert r[f"{t}_f1"] == pytest.approx(1.0)
        assert r[f"{t}_precision"] == pytest.approx(1.0)
        assert r[f"{t}_recall"] == pytest.approx(1.0)
        assert r[t] == r[f"{t}_f1"]
    assert bleu_score([IDENTICAL], [IDENTICAL]) == pytest.approx(1.0)
    assert sentence_bleu(IDENTICAL, IDENTICAL) == pytest.approx(1.0)
    assert squad_scores([IDENTICAL], [IDENTICAL]) == pytest.approx(
        {"exact_match": 1.0, "f1": 1.0}
    )


def test_disjoint_strings_score_zero():
    r = rouge_scores([DISJOINT_PRED], [DISJOINT_REF])
    assert all(v == 0.0 for v in r.values())
    assert bleu_score([DISJOINT_PRED], [DISJOINT_REF]) == 0.0
    assert sentence_bleu(DISJOINT_PRED, DISJOINT_REF) == 0.0
    assert squad_scores([DISJOINT_PRED], [DISJOINT_REF]) == {"exact_match": 0.0, "f1": 0.0}


# --------------------------------------------------------------------------
# ROUGE by hand
# --------------------------------------------------------------------------


def test_rouge_hand_computed():
    # rouge_score's tokenizer lowercases and splits on non-alphanumerics; the
    # Porter stemmer only touches tokens longer than 3 characters, so none of
    # these tokens change.
    # pred tokens: the cat sat                  (3 unigrams, 2 bigrams)
    # ref tokens:  the cat sat on the mat       (6 unigrams, 5 bigrams)
    # ROUGE-1: clipped overlap {the, cat, sat} = 3 -> P = 3/3, R = 3/6,
    #          F1 = 2*1*0.5/1.5 = 2/3
    # ROUGE-2: overlap {the cat, cat sat} = 2 -> P = 2/2, R = 2/5,
    #          F1 = 2*1*0.4/1.4 = 4/7
    # ROUGE-L: LCS "the cat sat" = 3 -> same as ROUGE-1.
    r = rouge_scores(["the cat sat"], ["the cat sat on the mat"])
    assert r["rouge1_precision"] == pytest.approx(1.0)
    assert r["rouge1_recall"] == pytest.approx(0.5)
    assert r["rouge1_f1"] == pytest.approx(2 / 3)
    assert r["rouge2_precision"] == pytest.approx(1.0)
    assert r["rouge2_recall"] == pytest.approx(2 / 5)
    assert r["rouge2_f1"] == pytest.approx(4 / 7)
    assert r["rougeL_f1"] == pytest.approx(2 / 3)


def test_rouge_l_differs_from_rouge1_when_order_differs():
    # pred "mat the cat" (3 tokens) vs ref "the cat sat on the mat" (6 tokens)
    # ROUGE-1: every pred token occurs in ref -> P = 1, R = 3/6, F1 = 2/3
    # ROUGE-2: bigrams {mat the, the cat}; only "the cat" matches -> P = 1/2,
    #          R = 1/5, F1 = 2*(1/10)/(7/10) = 2/7
    # ROUGE-L: LCS "the cat" = 2 -> P = 2/3, R = 2/6, F1 = 2*(2/9)/1 = 4/9
    r = rouge_scores(["mat the cat"], ["the cat sat on the mat"])
    assert r["rouge1_f1"] == pytest.approx(2 / 3)
    assert r["rouge2_precision"] == pytest.approx(1 / 2)
    assert r["rouge2_recall"] == pytest.approx(1 / 5)
    assert r["rouge2_f1"] == pytest.approx(2 / 7)
    assert r["rougeL_precision"] == pytest.approx(2 / 3)
    assert r["rougeL_recall"] == pytest.approx(1 / 3)
    assert r["rougeL_f1"] == pytest.approx(4 / 9)


def test_rouge_stemming_is_default_and_configurable():
    # Porter: cats -> cat, running -> run, runs -> run ("cat" is too short to stem).
    assert rouge_scores(["cats running"], ["cat runs"])["rouge1_f1"] == pytest.approx(1.0)
    assert rouge_scores(["cats running"], ["cat runs"], use_stemmer=False)["rouge1_f1"] == 0.0


def test_rouge_aggregation_and_per_example():
    preds = ["the cat sat", DISJOINT_PRED]
    refs = ["the cat sat on the mat", DISJOINT_REF]
    r = rouge_scores(preds, refs)
    assert r["rouge1_f1"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert r["rouge1_recall"] == pytest.approx((0.5 + 0.0) / 2)

    per = load_metric("rouge").compute(
        predictions=preds, references=refs, use_aggregator=False
    )
    assert per["rouge1_f1"] == pytest.approx([2 / 3, 0.0])
    assert per["rouge2_recall"] == pytest.approx([2 / 5, 0.0])


# --------------------------------------------------------------------------
# BLEU
# --------------------------------------------------------------------------


def _reference_bleu(hyps, refs, max_n=4):
    """Textbook corpus BLEU (Papineni et al.) on whitespace tokens, no smoothing.

    Clipped n-gram counts are summed over the corpus; the brevity penalty uses
    the summed hypothesis length and the summed closest reference lengths.
    """

    def ngrams(tokens, n):
        return collections.Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))

    matches = [0] * max_n
    totals = [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref_list in zip(hyps, refs):
        h = hyp.split()
        rs = [r.split() for r in ref_list]
        hyp_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
        for n in range(1, max_n + 1):
            hc = ngrams(h, n)
            max_ref = collections.Counter()
            for r in rs:
                max_ref |= ngrams(r, n)
            matches[n - 1] += sum(min(c, max_ref[g]) for g, c in hc.items())
            totals[n - 1] += sum(hc.values())
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p)


def test_bleu_hand_computed_precisions():
    # hyp "a b c d e" vs ref "a b c d f": same length -> BP = 1
    # p1 = 4/5, p2 = 3/4, p3 = 2/3, p4 = 1/2; product = 1/5
    # BLEU-4 = (1/5) ** (1/4) ~= 0.6687
    assert bleu_score(["a b c d e"], ["a b c d f"]) == pytest.approx(0.2 ** 0.25)
    result = load_metric("bleu").compute(predictions=["a b c d e"], references=["a b c d f"])
    assert result["precisions"] == pytest.approx([4 / 5, 3 / 4, 2 / 3, 1 / 2])
    assert result["brevity_penalty"] == pytest.approx(1.0)


def test_bleu_brevity_penalty():
    # Every n-gram of the 6-token hypothesis is in the 7-token reference, so
    # all precisions are 1 and BLEU = BP = exp(1 - r/c) = exp(1 - 7/6) ~= 0.8465.
    score = bleu_score(["the cat sat on the mat"], ["the cat sat on the mat today"])
    assert score == pytest.approx(math.exp(1 - 7 / 6))
    assert 0.0 < score < 1.0  # 0-1 scale, not sacrebleu's 0-100


def test_bleu_matches_independent_corpus_formula():
    hyps = [
        "the cat is sitting on the red mat",
        "a dog is in the big garden now",
        "he reads a good book every night",
    ]
    refs = [
        ["the cat is sitting on the mat"],
        ["a dog is in the big garden", "there is a dog in the garden"],
        ["every night he reads a good book before bed"],
    ]
    expected = _reference_bleu(hyps, refs)
    assert 0.0 < expected < 1.0
    assert bleu_score(hyps, refs) == pytest.approx(expected, rel=1e-9)


def test_bleu_tokenisation_is_configurable():
    # 13a splits off the final period; "none" keeps "mat." as one token.
    pred, ref = "the cat sat on the mat.", "the cat sat on the mat ."
    assert bleu_score([pred], [ref]) == pytest.approx(1.0)
    assert bleu_score([pred], [ref], tokenize="none") < 1.0


def test_sentence_bleu_per_example():
    per = load_metric("bleu").compute(
        predictions=[IDENTICAL, DISJOINT_PRED],
        references=[IDENTICAL, DISJOINT_REF],
        return_sentence_scores=True,
    )
    assert per["sentence_bleu"] == pytest.approx([1.0, 0.0])
    assert sentence_bleu("a b c d e", "a b c d f") == pytest.approx(0.2 ** 0.25)


# --------------------------------------------------------------------------
# SQuAD
# --------------------------------------------------------------------------


def test_squad_hand_computed_f1():
    # normalise: "the big cat" -> [big, cat]; "a big dog" -> [big, dog]
    # overlap 1 -> P = 1/2, R = 1/2, F1 = 1/2; EM = 0
    assert squad_scores(["the big cat"], ["a big dog"]) == pytest.approx(
        {"exact_match": 0.0, "f1": 0.5}
    )
    # pred [big, cat] vs ref [big, cat, sat, down]: P = 1, R = 1/2, F1 = 2/3
    assert squad_scores(["The big cat"], ["big cat sat down"])["f1"] == pytest.approx(2 / 3)


def test_squad_normalisation():
    # lowercase, punctuation removed ("-" and "!" vanish), article dropped,
    # whitespace collapsed
    r = squad_scores(["  The  Eiffel-Tower! "], ["eiffeltower"])
    assert r == {"exact_match": 1.0, "f1": 1.0}
    # articles only removed as whole words ("another" keeps its "an")
    assert squad_scores(["another"], ["other"])["f1"] == 0.0


def test_squad_aggregates_and_per_example():
    r = squad_scores(["a", "b"], ["a", "c"])
    assert r == pytest.approx({"exact_match": 0.5, "f1": 0.5})
    per = load_metric("squad").compute(
        predictions=["the big cat", "x"], references=["a big dog", "x"], use_aggregator=False
    )
    assert per["exact_match"] == [0.0, 1.0]
    assert per["f1"] == pytest.approx([0.5, 1.0])


# --------------------------------------------------------------------------
# several references: the best one counts
# --------------------------------------------------------------------------


def test_multiple_references_take_the_max():
    # SQuAD: max over references for EM and F1
    r = squad_scores(["Paris"], [["London", "paris."]])
    assert r == {"exact_match": 1.0, "f1": 1.0}
    r = squad_scores(["the big cat"], [["a big dog", "small dog"]])
    assert r["f1"] == pytest.approx(0.5)

    # ROUGE: the best-F1 reference per ROUGE type
    r = rouge_scores(["the cat sat"], [[DISJOINT_REF, "the cat sat"]])
    assert r["rouge1_f1"] == pytest.approx(1.0)
    assert r["rouge2_f1"] == pytest.approx(1.0)
    r = rouge_scores(["the cat sat"], [["the cat sat on the mat", DISJOINT_REF]])
    assert r["rouge1_f1"] == pytest.approx(2 / 3)

    # BLEU: a matching reference among several gives a perfect score
    assert sentence_bleu(IDENTICAL, [DISJOINT_REF, IDENTICAL]) == pytest.approx(1.0)
    assert bleu_score([IDENTICAL], [[DISJOINT_REF, IDENTICAL]]) == pytest.approx(1.0)


def test_mixed_reference_formats_are_accepted():
    # strings and lists can be mixed; strings become single-reference lists
    r = squad_scores(["Paris", "the big cat"], ["paris", ["a big dog", "nope"]])
    assert r == pytest.approx({"exact_match": 0.5, "f1": 0.75})
    # examples may have different numbers of references for BLEU too
    assert bleu_score([IDENTICAL, IDENTICAL], [IDENTICAL, [DISJOINT_REF, IDENTICAL]]) == (
        pytest.approx(1.0)
    )


def test_input_validation():
    with pytest.raises(ValueError):
        squad_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError):
        rouge_scores([], [])
    with pytest.raises(ValueError):
        bleu_score(["a"], [[]])
    with pytest.raises(TypeError):
        squad_scores("abc", ["a", "b", "c"])


def test_bootstrap_interval_of_a_mean():
    from icformer.metrics import bootstrap_ci

    values = [0.0] * 50 + [1.0] * 50
    low, high = bootstrap_ci(values, resamples=2000, seed=0)
    # The normal approximation: 0.5 +- 1.96 * sqrt(0.25 / 100) = 0.5 +- 0.098.
    assert low == pytest.approx(0.402, abs=0.02) and high == pytest.approx(0.598, abs=0.02)
    assert bootstrap_ci(values, resamples=2000, seed=0) == (low, high)  # seeded: tables regenerate identically
    narrow = bootstrap_ci(values * 16, resamples=2000, seed=0)
    assert narrow[1] - narrow[0] < (high - low) / 3  # 16x the items: a quarter of the width
    assert bootstrap_ci([0.25] * 7) == (0.25, 0.25)
    assert bootstrap_ci([]) == (None, None)
    with pytest.raises(ValueError):
        bootstrap_ci(values, confidence=1.5)


def test_bootstrap_interval_of_a_ratio_resamples_pairs():
    from icformer.metrics import bootstrap_ratio_ci

    top = [0.2, 0.4, 0.6, 0.8] * 10
    low, high = bootstrap_ratio_ci(top, [2 * t for t in top], seed=1)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)  # paired: every resample has ratio 1/2
    low, high = bootstrap_ratio_ci(top, list(reversed(top)), seed=1)
    assert low < 1.0 < high
    assert bootstrap_ratio_ci([], []) == (None, None) and bootstrap_ratio_ci([1.0], [0.0]) == (None, None)
    with pytest.raises(ValueError):
        bootstrap_ratio_ci([1.0], [1.0, 2.0])
