# Local `evaluate` metric module: SQuAD-style exact match and token F1.
#
# Answers are normalised the usual SQuAD way before comparison: lowercase,
# drop ASCII punctuation, drop the articles a/an/the, collapse whitespace.
# With several references the best-scoring one counts (max over references).
# Only `import evaluate` is used (see the note in ../rouge/rouge.py).
import collections
import re
import string

import datasets
import evaluate

_DESCRIPTION = (
    "SQuAD-style exact match and bag-of-tokens F1 between a predicted answer "
    "and one or more reference answers, on a 0-1 scale."
)

_CITATION = (
    "Rajpurkar et al. SQuAD: 100,000+ Questions for Machine Comprehension of "
    "Text. EMNLP 2016."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted answer strings.
    references: list of reference answers, one item per prediction; an item
        may be a string or a non-empty list of acceptable answers.
    use_aggregator: if True (default) return means over examples; if False
        return per-example lists.
Returns:
    exact_match: 1 if the normalised prediction equals a normalised reference.
    f1: token-overlap F1 against the best reference. If the prediction or the
        reference normalises to no tokens, F1 is 1 when both are empty, else 0.
"""

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalize_answer(text):
    """Lowercase, remove punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction, reference):
    return float(normalize_answer(prediction) == normalize_answer(reference))


def f1_score(prediction, reference):
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    overlap = collections.Counter(pred_tokens) & collections.Counter(ref_tokens)
    n_same = sum(overlap.values())
    if n_same == 0:
        return 0.0
    precision = n_same / len(pred_tokens)
    recall = n_same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Squad(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Value("string"),
                    }
                ),
            ],
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references, use_aggregator=True):
        if len(predictions) != len(references):
            raise ValueError(
                f"got {len(predictions)} predictions but {len(references)} references"
            )
        em_values, f1_values = [], []
        for prediction, reference in zip(predictions, references):
            refs = [reference] if isinstance(reference, str) else list(reference)
            if not refs:
                raise ValueError("an example has an empty list of references")
            em_values.append(max(exact_match_score(prediction, r) for r in refs))
            f1_values.append(max(f1_score(prediction, r) for r in refs))
        if not use_aggregator:
            return {"exact_match": em_values, "f1": f1_values}
        n = len(em_values)
        return {
            "exact_match": sum(em_values) / n if n else 0.0,
            "f1": sum(f1_values) / n if n else 0.0,
        }
