"""Offline evaluation metrics for IC-Former experiments.

The metrics are small local ``evaluate`` modules living next to this file
(``rouge/rouge.py``, ``bleu/bleu.py``, ``squad/squad.py``). They are loaded
with ``evaluate.load(<absolute path>)``, which never consults the Hugging Face
Hub. ``evaluate`` copies each script into its dynamic-modules cache
(``$HF_MODULES_CACHE``, default ``~/.cache/huggingface/modules/evaluate_modules/
metrics/<name>/<sha256 of the script>/``) and imports it from there. Metric
instances are created with ``keep_in_memory=True``, so predictions are not
written to ``$HF_METRICS_CACHE`` (only an empty ``<name>/default`` directory is
created there).

All scores are on a 0-1 scale (BLEU included, as in the IC-Former paper).

Public API::

    load_metric(name) -> evaluate.EvaluationModule      # "rouge" | "bleu" | "squad"
    metric_path(name) -> str
    rouge_scores(predictions, references, *, use_stemmer=True, rouge_types=None) -> dict
    bleu_score(predictions, references, *, tokenize="13a") -> float
    sentence_bleu(prediction, reference, *, tokenize="13a") -> float
    squad_scores(predictions, references) -> dict
    bootstrap_ci(values, *, resamples=1000, confidence=0.95, seed=0) -> (low, high)
    bootstrap_ratio_ci(numerators, denominators, ...) -> (low, high)
    clear_metric_cache() -> None

``references`` may be ``list[str]`` (one reference per prediction) or
``list[list[str]]`` (several references per prediction).
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover
    import evaluate

__all__ = [
    "AVAILABLE_METRICS",
    "metric_path",
    "load_metric",
    "clear_metric_cache",
    "rouge_scores",
    "bleu_score",
    "sentence_bleu",
    "squad_scores",
    "bootstrap_ci",
    "bootstrap_ratio_ci",
]

_METRICS_DIR = Path(__file__).resolve().parent

#: Names accepted by :func:`load_metric`.
AVAILABLE_METRICS = ("rouge", "bleu", "squad")

Reference = Union[str, Sequence[str]]

# A loaded metric instance keeps state between add_batch() and compute(), so
# concurrent compute() calls on the shared cached instance must not overlap.
_COMPUTE_LOCK = threading.RLock()


def _canonical_name(name: str) -> str:
    if not isinstance(name, str):
        raise ValueError(
            f"metric name must be a string, got {type(name).__name__}; "
            f"available metrics: {', '.join(AVAILABLE_METRICS)}"
        )
    key = name.strip().lower()
    if key not in AVAILABLE_METRICS:
        raise ValueError(
            f"unknown metric {name!r}; available metrics: {', '.join(AVAILABLE_METRICS)}"
        )
    return key


def metric_path(name: str) -> str:
    """Absolute path of the local ``evaluate`` script for metric ``name``."""
    key = _canonical_name(name)
    return str(_METRICS_DIR / key / f"{key}.py")


def _force_offline_env() -> None:
    # Read by `evaluate.config` at import time. Loading a local script never
    # needs the network anyway; this additionally switches off evaluate's
    # optional Hub calls (e.g. download-count pings). Respect explicit
    # user settings. HF_HUB_OFFLINE is deliberately left alone: it is
    # process-wide and would also stop transformers from fetching models.
    os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")


@functools.lru_cache(maxsize=None)
def _load_cached(key: str) -> "evaluate.EvaluationModule":
    _force_offline_env()
    import evaluate

    return evaluate.load(metric_path(key), keep_in_memory=True)


def load_metric(name: str) -> "evaluate.EvaluationModule":
    """Load the local ``evaluate`` module for ``name`` ("rouge", "bleu", "squad").

    The name is case-insensitive. Instances are cached per process, so repeated
    calls return the same object. Raises ``ValueError`` for unknown names.
    """
    return _load_cached(_canonical_name(name))


def clear_metric_cache() -> None:
    """Forget the per-process cache of loaded metric instances."""
    _load_cached.cache_clear()


# ---------------------------------------------------------------------------
# Convenience wrappers used by evaluation code.
# ---------------------------------------------------------------------------


def _check_predictions(predictions: Sequence[str]) -> List[str]:
    if isinstance(predictions, str):
        raise TypeError("predictions must be a list of strings, not a single string")
    predictions = list(predictions)
    if not predictions:
        raise ValueError("predictions must not be empty")
    for p in predictions:
        if not isinstance(p, str):
            raise TypeError(f"each prediction must be a string, got {type(p).__name__}")
    return predictions


def _check_references(
    references: Sequence[Reference], n_predictions: int
) -> Union[List[str], List[List[str]]]:
    """Validate references; return either all strings or all lists of strings."""
    if isinstance(references, str):
        raise TypeError("references must be a list, not a single string")
    references = list(references)
    if len(references) != n_predictions:
        raise ValueError(
            f"got {n_predictions} predictions but {len(references)} references"
        )
    if all(isinstance(r, str) for r in references):
        return references
    # At least one example has several references: make every item a list so
    # the metric sees a single, consistent input format.
    out: List[List[str]] = []
    for r in references:
        refs = [r] if isinstance(r, str) else list(r)
        if not refs:
            raise ValueError("an example has an empty list of references")
        if not all(isinstance(x, str) for x in refs):
            raise TypeError("references must be strings or lists of strings")
        out.append(refs)
    return out


def _compute(name: str, predictions, references, **kwargs) -> dict:
    predictions = _check_predictions(predictions)
    references = _check_references(references, len(predictions))
    metric = load_metric(name)
    with _COMPUTE_LOCK:
        return metric.compute(predictions=predictions, references=references, **kwargs)


def rouge_scores(
    predictions: Sequence[str],
    references: Sequence[Reference],
    *,
    use_stemmer: bool = True,
    rouge_types: Optional[Sequence[str]] = None,
) -> Dict[str, float]:
    """Mean ROUGE precision/recall/F1 over examples (0-1).

    Keys, for T in rouge_types (default rouge1, rouge2, rougeL):
    ``T_precision``, ``T_recall``, ``T_f1`` and ``T`` (= ``T_f1``).
    With several references, the best-F1 reference counts per ROUGE type.
    """
    kwargs = {"use_stemmer": use_stemmer}
    if rouge_types is not None:
        kwargs["rouge_types"] = list(rouge_types)
    return _compute("rouge", predictions, references, **kwargs)


def bleu_score(
    predictions: Sequence[str],
    references: Sequence[Reference],
    *,
    tokenize: str = "13a",
) -> float:
    """Corpus BLEU-4 (sacrebleu, 13a tokenisation by default) on a 0-1 scale."""
    return float(_compute("bleu", predictions, references, tokenize=tokenize)["bleu"])


def sentence_bleu(prediction: str, reference: Reference, *, tokenize: str = "13a") -> float:
    """Sentence-level BLEU-4 (sacrebleu, exp smoothing, effective order) in 0-1."""
    if not isinstance(prediction, str):
        raise TypeError("prediction must be a string")
    result = _compute(
        "bleu", [prediction], [reference], tokenize=tokenize, return_sentence_scores=True
    )
    return float(result["sentence_bleu"][0])


def squad_scores(
    predictions: Sequence[str], references: Sequence[Reference]
) -> Dict[str, float]:
    """SQuAD exact match and token F1 (max over references, mean over examples, 0-1).

    Returns ``{"exact_match": float, "f1": float}``.
    """
    return _compute("squad", predictions, references)


def _resample_means(columns: Sequence[Sequence[float]], resamples: int, seed: int):
    """Means of each column over the same `resamples` draws of row indices (paired resampling)."""
    import numpy as np

    data = np.asarray(columns, dtype=float)  # [columns, n]
    rng = np.random.default_rng(seed)
    index = rng.integers(0, data.shape[1], size=(resamples, data.shape[1]))
    return data[:, index].mean(axis=2)  # [columns, resamples]


def _interval(draws, confidence: float) -> tuple[float, float]:
    import numpy as np

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(
    values: Sequence[float], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[Optional[float], Optional[float]]:
    """Percentile bootstrap interval of the mean of `values` (None, None for no values).

    Seeded, so a table regenerated from the same samples has the same intervals. For a paired
    comparison of two methods on the same items, pass the per-item differences.
    """
    if not values:
        return None, None
    return _interval(_resample_means([values], resamples, seed)[0], confidence)


def bootstrap_ratio_ci(
    numerators: Sequence[float], denominators: Sequence[float], *, resamples: int = 1000,
    confidence: float = 0.95, seed: int = 0,
) -> tuple[Optional[float], Optional[float]]:
    """Percentile bootstrap interval of mean(numerators) / mean(denominators), items resampled in pairs."""
    if len(numerators) != len(denominators):
        raise ValueError("numerators and denominators must pair up item by item")
    if not numerators:
        return None, None
    import numpy as np

    top, bottom = _resample_means([numerators, denominators], resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1), np.nan)
    if np.isnan(ratio).all():
        return None, None
    return _interval(ratio, confidence)
