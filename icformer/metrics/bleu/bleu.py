# Local `evaluate` metric module: BLEU via `sacrebleu`, rescaled to 0-1.
#
# sacrebleu reports BLEU (and n-gram precisions) in percent (0-100); the
# IC-Former paper reports BLEU-4 as a fraction in [0, 1], so every percentage
# coming out of sacrebleu is divided by 100 here.
# Only `import evaluate` is used (see the note in ../rouge/rouge.py).
import datasets
import evaluate
from sacrebleu.metrics import BLEU

_DESCRIPTION = (
    "Corpus-level BLEU (default BLEU-4) computed with sacrebleu, reported on a "
    "0-1 scale, optionally with sentence-level BLEU for every example."
)

_CITATION = (
    "Papineni et al. BLEU: a Method for Automatic Evaluation of Machine "
    "Translation. ACL 2002. Post, Matt. A Call for Clarity in Reporting BLEU "
    "Scores. WMT 2018."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of references, one item per prediction; an item may be a
        string or a non-empty list of strings (multi-reference BLEU; examples
        may have different numbers of references).
    tokenize: sacrebleu tokenizer name (default '13a'; also 'none', 'intl',
        'char', 'zh', ...). Some tokenizers need extra packages or downloads.
    lowercase: lowercase before scoring (default False).
    max_order: maximum n-gram order (default 4, i.e. BLEU-4).
    smooth_method: sacrebleu smoothing: 'exp' (default, sacrebleu's default),
        'none', 'floor' or 'add-k'. Smoothing only matters when some n-gram
        order has zero matches; a corpus with no matching unigram scores 0.
    smooth_value: value for 'floor' / 'add-k' (None: sacrebleu's default).
    use_effective_order: for the corpus score, ignore n-gram orders with no
        candidate n-grams (default False; sentence scores always use it).
    return_sentence_scores: also return `sentence_bleu`, the sentence-level
        BLEU of every example (same settings, effective order on).
Returns:
    bleu: corpus BLEU in [0, 1].
    precisions: modified n-gram precisions (orders 1..max_order) in [0, 1].
    brevity_penalty, length_ratio, translation_length, reference_length.
    sentence_bleu (only if requested): list of floats in [0, 1].
"""


def _reference_lists(references):
    """Turn each reference item into a non-empty list of strings."""
    out = []
    for reference in references:
        if isinstance(reference, str):
            refs = [reference]
        else:
            refs = [r for r in reference if r is not None]
        if not refs:
            raise ValueError("an example has an empty list of references")
        out.append(refs)
    return out


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
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
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
            reference_urls=["https://aclanthology.org/P02-1040/"],
        )

    def _compute(
        self,
        predictions,
        references,
        tokenize="13a",
        lowercase=False,
        max_order=4,
        smooth_method="exp",
        smooth_value=None,
        use_effective_order=False,
        return_sentence_scores=False,
    ):
        if len(predictions) != len(references):
            raise ValueError(
                f"got {len(predictions)} predictions but {len(references)} references"
            )
        ref_lists = _reference_lists(references)

        # sacrebleu wants reference *streams*: stream k holds the k-th
        # reference of every example; None marks a missing reference.
        n_streams = max((len(refs) for refs in ref_lists), default=1)
        streams = [
            [refs[k] if k < len(refs) else None for refs in ref_lists]
            for k in range(n_streams)
        ]

        common = dict(
            lowercase=lowercase,
            tokenize=tokenize,
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            max_ngram_order=max_order,
        )
        corpus = BLEU(effective_order=use_effective_order, **common).corpus_score(
            list(predictions), streams
        )
        result = {
            "bleu": corpus.score / 100.0,
            "precisions": [p / 100.0 for p in corpus.precisions],
            "brevity_penalty": float(corpus.bp),
            "length_ratio": float(corpus.ratio),
            "translation_length": int(corpus.sys_len),
            "reference_length": int(corpus.ref_len),
        }
        if return_sentence_scores:
            sentence_metric = BLEU(effective_order=True, **common)
            result["sentence_bleu"] = [
                sentence_metric.sentence_score(prediction, refs).score / 100.0
                for prediction, refs in zip(predictions, ref_lists)
            ]
        return result
