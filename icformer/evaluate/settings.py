"""How much `python -m icformer evaluate` measures: `EvalSettings`, whose fields are also its flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..generation import NO_REPEAT_NGRAM

SECTIONS = ("qa", "reconstruction", "randomness", "bench")


def _option(default: Any, help_text: str, **extra: Any) -> Any:
    """A field with its flag's help (`icformer.arguments` reads it); tuples are stored as given."""
    return field(default=default, metadata=dict(help=help_text, **extra))


@dataclass
class EvalSettings:
    """How much to measure. The defaults fill about an hour of one core of a shared 2-core CPU."""

    qa_samples: int = _option(300, "questions (seeded, tasks taken in turn)")
    # Held-out QA: eval.jsonl's tasks are never trained on; instruct_test.jsonl's QA rows (its
    # "continuation" rows are not questions) are of the fine-tuning tasks, on contexts never trained on.
    qa_files: tuple[str, ...] = _option(("eval.jsonl", "instruct_test.jsonl"), "QA files in the data directory")
    max_new_tokens: int = _option(12, "QA generation limit; answers stop at their first line anyway")
    qa_max_context_tokens: int = _option(256, "longest QA context: two IC-Former chunks (the paper: one of 512)")
    batch_size: int = _option(8, "prompts decoded together (greedy, left-padded)")
    length_buckets: tuple[int, ...] = _option((100, 200, 300, 400, 500), "bucket upper edges in tokens")
    bucket_width: int = _option(50, "lengths are drawn from (edge - width, edge]")
    length_samples: int = _option(30, "windows per bucket")
    randomness_length: int | None = _option(None, "tokens per randomness sequence (default: the chunk size L, "
                                                  "as the paper's 512)")
    randomness_samples: int = _option(5, "sequences per randomness kind")
    reconstruction_extra_tokens: int = _option(16, "reconstructions generate up to num_tokens + this ...")
    reconstruction_max_new_tokens: int = _option(40, "... but at most this many: BLEU and CE score that prefix")
    reconstruction_no_repeat_ngram: int = _option(NO_REPEAT_NGRAM, "a second greedy decoding of each reconstruction "
                                                                   "that never repeats an n-gram of this length "
                                                                   "(bleu_no_repeat; 0: none)")
    bootstrap_resamples: int = _option(1000, "resamples for the 95%% intervals")
    bench_lengths: tuple[int, ...] = _option((128, 512, 2048), "benchmark context lengths")
    bench_batch_sizes: tuple[int, ...] = _option((1, 8), "benchmark batch sizes")
    bench_repeats: int = _option(3, "timed runs per benchmark step")
    bench_max_batch_tokens: int | None = _option(4096, "skip bigger batch x length (8x512 fits; 8x2048 and 32x512 "
                                                       "are skipped on CPU)")
    bench_quick: bool = _option(False, "icformer.bench's own quick preset")
    sections: tuple[str, ...] = _option(SECTIONS, "what to compute now", choices=SECTIONS)
    seed: int = _option(0, "questions and text windows drawn")

    @classmethod
    def quick(cls, **overrides: Any) -> "EvalSettings":
        """A few minutes on 2 shared CPU cores: a handful of samples, short generations."""
        values: dict[str, Any] = dict(
            qa_samples=6, max_new_tokens=8, length_buckets=(100,), length_samples=2,
            randomness_length=32, randomness_samples=1,
            reconstruction_max_new_tokens=16, bootstrap_resamples=200, bench_quick=True,
        )
        values.update(overrides)
        return cls(**values)

    def check(self) -> None:
        """Raise on sections this evaluation does not know."""
        unknown = set(self.sections) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
