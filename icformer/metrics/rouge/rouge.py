# Local `evaluate` metric module: ROUGE-N / ROUGE-L via Google's `rouge_score`.
#
# Loaded by absolute path (see icformer/metrics/__init__.py), so no Hugging
# Face Hub access is needed. Note: `evaluate.load` locates the metric class by
# scanning this module for the first EvaluationModule subclass, so only
# `import evaluate` (never `from evaluate import Metric`) is used here.
import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = (
    "ROUGE-1, ROUGE-2 and ROUGE-L (sentence-level longest common subsequence) "
    "computed with the `rouge_score` package. Precision, recall and F1 are "
    "reported for each ROUGE type, as plain means over the examples (no "
    "bootstrap resampling). All values are on a 0-1 scale."
)

_CITATION = (
    "Lin, Chin-Yew. ROUGE: A Package for Automatic Evaluation of Summaries. "
    "Text Summarization Branches Out (ACL Workshop), 2004."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of reference texts, one per prediction; each item may be
        a string or a non-empty list of strings (several references: for each
        ROUGE type the reference with the highest F1 is kept).
    rouge_types: ROUGE types to compute (default: rouge1, rouge2, rougeL).
        Anything `rouge_score` accepts works (e.g. rougeLsum, rouge3).
    use_stemmer: apply the Porter stemmer to tokens (default True).
    use_aggregator: if True (default) return means over examples (floats);
        if False return one value per example (lists).
    tokenizer: optional object with a `tokenize(text) -> list[str]` method
        replacing rouge_score's default tokenizer (which lowercases and keeps
        only ASCII letters and digits, so non-Latin text needs a custom one).
Returns:
    For each ROUGE type T: `T_precision`, `T_recall`, `T_f1`, and `T` (alias of
    `T_f1`, matching the usual convention of reporting ROUGE as F1).
"""

DEFAULT_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
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
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
            reference_urls=["https://aclanthology.org/W04-1013/"],
        )

    def _compute(
        self,
        predictions,
        references,
        rouge_types=None,
        use_stemmer=True,
        use_aggregator=True,
        tokenizer=None,
    ):
        if rouge_types is None:
            rouge_types = list(DEFAULT_ROUGE_TYPES)
        elif isinstance(rouge_types, str):
            rouge_types = [rouge_types]
        else:
            rouge_types = list(rouge_types)
        if not rouge_types:
            raise ValueError("rouge_types must not be empty")
        if len(predictions) != len(references):
            raise ValueError(
                f"got {len(predictions)} predictions but {len(references)} references"
            )

        scorer = rouge_scorer.RougeScorer(
            rouge_types, use_stemmer=use_stemmer, tokenizer=tokenizer
        )

        per_example = {t: {"precision": [], "recall": [], "f1": []} for t in rouge_types}
        for prediction, reference in zip(predictions, references):
            # rouge_score's argument order is (target, prediction).
            if isinstance(reference, str):
                scores = scorer.score(reference, prediction)
            else:
                reference = list(reference)
                if not reference:
                    raise ValueError("an example has an empty list of references")
                scores = scorer.score_multi(reference, prediction)
            for t in rouge_types:
                per_example[t]["precision"].append(float(scores[t].precision))
                per_example[t]["recall"].append(float(scores[t].recall))
                per_example[t]["f1"].append(float(scores[t].fmeasure))

        result = {}
        for t in rouge_types:
            for stat in ("precision", "recall", "f1"):
                values = per_example[t][stat]
                if use_aggregator:
                    value = sum(values) / len(values) if values else 0.0
                else:
                    value = values
                result[f"{t}_{stat}"] = value
            result[t] = result[f"{t}_f1"]
        return result
