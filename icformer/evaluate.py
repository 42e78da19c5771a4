"""`python -m icformer evaluate`: the paper's measurements (PAPER.md §4) for one compressor.

Sections (each resumable, in this order):

* ``qa`` — question answering on held-out questions (``eval.jsonl``'s tasks, never trained on, and
  ``instruct_test.jsonl``'s QA rows, contexts never trained on) for the full context, ICAE,
  IC-Former and (when its checkpoint exists) IC-Former without pre-training, plus two floors:
  ``none`` (the question alone) and ``<method>-swapped`` (a method's vectors of another context of
  the same task). Every method gets the same short-answer prompt (``prompts.short_answer_question``),
  greedy decoding cut at the first line; ROUGE-1/2/L precision/recall/F1 (paper Table 4) and SQuAD
  exact match / F1, each mean with a bootstrap 95% interval, and each method's paired gain over
  its floors.
* ``reconstruction`` — autoencoding quality against context length (paper Fig. 5 / Table 3):
  windows of ``pretrain_valid.jsonl`` in token-length buckets (upper edges 100..500); greedy
  reconstruction capped at ``reconstruction_max_new_tokens``, its prefix scored by sentence BLEU-4
  (averaged, with intervals) and corpus BLEU-4, plus the teacher-forced cross-entropy of the same
  original tokens given the reconstruction prompt (``[vectors][AE]<bos>`` in the default prompt
  style, ``prompts.py``).
* ``randomness`` — the same at one fixed length (default: the chunk size L) for normal text,
  the same tokens reversed, a patterned sequence (a random start id, then +1 each step) and
  uniformly random ids (paper Table 5).
* ``bench`` — compression speed and FLOPs (paper Tables 1 and 2) from ``icformer.bench``.

``EvalSettings.sections`` chooses what to compute now; the summaries always cover every finished
sample of the current settings, so ``--sections qa`` leaves the reconstruction tables in place.

Everything lands in one directory in the schema ``app/results.py`` documents (qa_summary.csv,
reconstruction_by_length.csv, paper_vs_ours.csv, qa_samples.jsonl, meta.json, bench/evaluate.csv),
plus qa_by_task.csv, reconstruction_by_randomness.csv, reconstruction_samples.jsonl and a
generated README.md. Every table has a ``<stem>.json`` twin. One run per directory at a time.

Resuming: each finished sample is appended to its JSONL at once, tagged with a key of what it
depends on (the LLM's fingerprint and, for a compressor, its weights', the generation settings;
the sample's own content is hashed into its id). A rerun reuses rows whose id and key match and
recomputes every summary from the JSONL, so a new IC-Former checkpoint recomputes only IC-Former's
rows. Rows of other settings are moved to ``<out>/.cache/`` (git-ignored), where a later run with
those settings finds them again, so ``--quick`` and the full run can share a folder. Generation is
batched (``generate_batch``): a CPU decodes a few sequences in little more time than one.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import itertools
import json
import math
import os
import random
import shlex
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from .io import sha256_file
from .prompts import (Layout, assemble, prompt_style, question_layout, reconstruction_layout,
                      short_answer_question, stop_token_ids, SHORT_ANSWER_INSTRUCTION)
from .timing import machine_description, source_commit

# --------------------------------------------------------------------------- the paper's numbers

# Every number of PAPER.md §4 (the project's summary of the paper), with where ours comes from.
# Columns: table, setting, metric, paper value, key into the dict `_our_numbers` builds (None:
# we have no counterpart), methods whose `trained` flag the comparison depends on.
_RATIO_R1 = 0.516 / 0.555
_RATIO_R2 = 0.348 / 0.377
_RATIO_RL = 0.482 / 0.519
PAPER_NUMBERS: tuple[tuple[str, str, str, float, str | None, tuple[str, ...]], ...] = (
    # Table 1: compression time on one RTX A6000, ICAE -> IC-Former.
    ("Speed (Table 1)", "ICAE 8x512", "compress_s", 0.476, "bench:8x512:icae:compress_s", ()),
    ("Speed (Table 1)", "IC-Former 8x512", "compress_s", 0.007, "bench:8x512:icformer:compress_s", ()),
    ("Speed (Table 1)", "IC-Former vs ICAE 8x512", "speedup", 68.0, "bench:8x512:icformer:speedup_vs_icae", ()),
    ("Speed (Table 1)", "IC-Former vs full context 8x512", "total_speedup", 3.7,
     "bench:8x512:icformer:total_speedup_vs_full", ()),
    ("Speed (Table 1)", "ICAE 32x512", "compress_s", 1.848, "bench:32x512:icae:compress_s", ()),
    ("Speed (Table 1)", "IC-Former 32x512", "compress_s", 0.017, "bench:32x512:icformer:compress_s", ()),
    ("Speed (Table 1)", "IC-Former vs ICAE 32x512", "speedup", 108.0, "bench:32x512:icformer:speedup_vs_icae", ()),
    ("Speed (Table 1)", "IC-Former vs full context 32x512", "total_speedup", 3.8,
     "bench:32x512:icformer:total_speedup_vs_full", ()),
    ("Speed (Table 1)", "ICAE 8x2048", "compress_s", 3.268, "bench:8x2048:icae:compress_s", ()),
    ("Speed (Table 1)", "IC-Former 8x2048", "compress_s", 0.029, "bench:8x2048:icformer:compress_s", ()),
    ("Speed (Table 1)", "IC-Former vs ICAE 8x2048", "speedup", 112.0, "bench:8x2048:icformer:speedup_vs_icae", ()),
    ("Speed (Table 1)", "IC-Former vs full context 8x2048", "total_speedup", 5.3,
     "bench:8x2048:icformer:total_speedup_vs_full", ()),
    # Peak memory when compressing alone.
    ("Memory", "IC-Former compressing (lowest)", "peak_memory_gb", 2.28, "memory:icformer:min", ()),
    ("Memory", "IC-Former compressing (highest)", "peak_memory_gb", 3.52, "memory:icformer:max", ()),
    ("Memory", "ICAE compressing (lowest)", "peak_memory_gb", 19.76, "memory:icae:min", ()),
    ("Memory", "ICAE compressing (highest)", "peak_memory_gb", 38.74, "memory:icae:max", ()),
    # Table 2: FLOPs of compressing 512 tokens into 128 vectors on Llama-2-7B.
    ("FLOPs (Table 2)", "ICAE 512 tokens", "flops", 8.50e12, "flops:icae", ()),
    ("FLOPs (Table 2)", "IC-Former 512 tokens", "flops", 2.62e11, "flops:icformer", ()),
    ("FLOPs (Table 2)", "ICAE / IC-Former", "flops_ratio", 8.50e12 / 2.62e11, "flops:ratio", ()),
    ("FLOPs (Table 2)", "ICAE formula at Llama-2-7B sizes", "flops", 8.50e12, "flops:icae:llama2", ()),
    ("FLOPs (Table 2)", "IC-Former formula at Llama-2-7B sizes", "flops", 2.62e11, "flops:icformer:llama2", ()),
    # Fig. 5 / Table 3: reconstruction BLEU-4 after pre-training, 4x compression.
    ("Reconstruction (Fig. 5)", "IC-Former 128 digests, 100 tokens", "bleu", 0.997, "rec:icformer:100", ("icformer",)),
    ("Reconstruction (Fig. 5)", "IC-Former 128 digests, 200 tokens", "bleu", 0.997, "rec:icformer:200", ("icformer",)),
    ("Reconstruction (Fig. 5)", "IC-Former 128 digests, 300 tokens", "bleu", 0.997, "rec:icformer:300", ("icformer",)),
    ("Reconstruction (Fig. 5)", "IC-Former 128 digests, 400 tokens", "bleu", 0.989, "rec:icformer:400", ("icformer",)),
    ("Reconstruction (Fig. 5)", "IC-Former 128 digests, 500 tokens", "bleu", 0.969, "rec:icformer:500", ("icformer",)),
    ("Reconstruction (Fig. 5)", "ICAE 128 slots, 500 tokens", "bleu", 0.965, "rec:icae:500", ("icae",)),
    ("Reconstruction (Fig. 5)", "IC-Former 64 digests, 500 tokens", "bleu", 0.75, None, ("icformer",)),
    ("Reconstruction (Fig. 5)", "IC-Former 32 digests, 500 tokens", "bleu", 0.49, None, ("icformer",)),
    # Table 5: text randomness, 512 -> 128.
    ("Text randomness (Table 5)", "IC-Former, normal text", "bleu", 0.90, "rand:icformer:normal", ("icformer",)),
    ("Text randomness (Table 5)", "IC-Former, reversed", "bleu", 0.67, "rand:icformer:reversed", ("icformer",)),
    ("Text randomness (Table 5)", "IC-Former, patterned random", "bleu", 0.13, "rand:icformer:patterned",
     ("icformer",)),
    ("Text randomness (Table 5)", "IC-Former, random", "bleu", 0.008, "rand:icformer:random", ("icformer",)),
    # Table 4: PwC test, specific questions, greedy, up to 256 new tokens.
    *(
        ("PwC QA (Table 4)", setting, metric, value, key and f"qa:{key}:{metric}", (key,) if key else ())
        for setting, key, values in (
            ("full 512-token context", "full", (0.501, 0.331, 0.468)),
            ("ICAE 128 slots", "icae", (0.555, 0.377, 0.519)),
            ("IC-Former 128 digests", "icformer", (0.516, 0.348, 0.482)),
            ("IC-Former 64 digests", None, (0.377, 0.209, 0.343)),
            ("IC-Former 64+64 (two chunks)", None, (0.500, 0.327, 0.465)),
            ("IC-Former without pre-training", "icformer-no-pretrain", (0.389, 0.212, 0.355)),
        )
        for metric, value in zip(("rouge1_f", "rouge2_f", "rougeL_f"), values)
    ),
    *(
        ("PwC QA (Table 4)", "IC-Former / ICAE", f"{metric}_ratio", ratio, f"qa-ratio:icformer:icae:{metric}",
         ("icformer", "icae"))
        for metric, ratio in (("rouge1_f", _RATIO_R1), ("rouge2_f", _RATIO_R2), ("rougeL_f", _RATIO_RL))
    ),
    ("PwC QA (Table 4)", "IC-Former / full context", "rougeL_f_ratio", 0.482 / 0.468, "qa-ratio:icformer:full:rougeL_f",
     ("icformer",)),
)
_SPEED_FIELDS = {"icae:compress_s": "icae_s", "icformer:compress_s": "icformer_s",
                 "icformer:speedup_vs_icae": "speedup", "icformer:total_speedup_vs_full": "total_speedup"}


def paper_speed_rows() -> dict[tuple[int, int], dict[str, float]]:
    """The paper's Table 1 (one RTX A6000) by (batch, length): icae_s, icformer_s, speedup, total_speedup."""
    rows: dict[tuple[int, int], dict[str, float]] = {}
    for _, _, _, value, key, _ in PAPER_NUMBERS:
        if key and key.startswith("bench:"):
            _, shape, field_key = key.split(":", 2)
            batch, length = map(int, shape.split("x"))
            rows.setdefault((batch, length), {})[_SPEED_FIELDS[field_key]] = value
    return rows


# The sizes PAPER.md §4's FLOPs are computed at (Llama-2-7B, 512 -> 128).
LLAMA2_7B = dict(b=1, s=512, k=128, h=4096, m=11008)

# --------------------------------------------------------------------------- settings

SECTIONS = ("qa", "reconstruction", "randomness", "bench")
RANDOMNESS_KINDS = ("normal", "reversed", "patterned", "random")
QA_SCORES = ("rouge1_p", "rouge1_r", "rouge1_f", "rouge2_p", "rouge2_r", "rouge2_f",
             "rougeL_p", "rougeL_r", "rougeL_f", "exact_match", "f1")
NO_PRETRAIN = "icformer-no-pretrain"
NONE = "none"  # the no-context floor
SWAPPED = "-swapped"  # suffix of a method's swapped-context floor
# qa_answers: one row per (question, method or floor), the resumable store; qa_samples: the same grouped
# per question for the app; reconstruction_samples: one row per (window, method), the store itself.
FILES = dict(qa_answers="qa_answers.jsonl", qa_samples="qa_samples.jsonl", rec_samples="reconstruction_samples.jsonl")
# meta.json is shown whole above the app's tables, so the bulky run details go to run.json.
RUN_DETAILS = ("settings", "samples", "section_seconds", "bench_source", "earlier_invocations")
# bench/<stem>.csv: not "bench", which `python -m icformer bench --out <results>/bench` writes.
BENCH_STEM = "evaluate"


@dataclass
class EvalSettings:
    """How much to measure. The defaults fill about an hour of one core of a shared 2-core CPU."""

    qa_samples: int = 300  # questions (seeded, tasks taken in turn)
    # Held-out QA: eval.jsonl's tasks are never trained on; instruct_test.jsonl's QA rows (its
    # "continuation" rows are not questions) are of the fine-tuning tasks, on contexts never trained on.
    qa_files: tuple[str, ...] = ("eval.jsonl", "instruct_test.jsonl")
    max_new_tokens: int = 12  # QA generation limit; answers stop at their first line anyway
    qa_max_context_tokens: int = 256  # two IC-Former chunks (the paper: 512 = one chunk of its L)
    batch_size: int = 8  # prompts decoded together (greedy, left-padded)
    length_buckets: tuple[int, ...] = (100, 200, 300, 400, 500)  # upper edges, tokens
    bucket_width: int = 50  # lengths are drawn from (edge - width, edge]
    length_samples: int = 30  # windows per bucket
    randomness_length: int | None = None  # None: IC-Former's chunk size L (the paper: 512 = its L)
    randomness_samples: int = 5  # sequences per kind
    reconstruction_extra_tokens: int = 16  # generate up to num_tokens + this ...
    reconstruction_max_new_tokens: int = 40  # ... but at most this many: BLEU and CE score that prefix
    bootstrap_resamples: int = 1000  # for the 95% intervals
    bench_lengths: tuple[int, ...] = (128, 512, 2048)
    bench_batch_sizes: tuple[int, ...] = (1, 8)
    bench_repeats: int = 3
    bench_max_batch_tokens: int | None = 4096  # 8x512 fits; 8x2048 and 32x512 are skipped on CPU
    bench_quick: bool = False  # icformer.bench's own quick preset
    sections: tuple[str, ...] = SECTIONS
    seed: int = 0

    @classmethod
    def quick(cls, **overrides: Any) -> "EvalSettings":
        """A few minutes on 2 shared CPU cores: a handful of samples, short generations."""
        values: dict[str, Any] = dict(
            qa_samples=6, max_new_tokens=8, length_buckets=(100,), length_samples=2,
            randomness_length=32, randomness_samples=1, reconstruction_max_new_tokens=16,
            bootstrap_resamples=200, bench_quick=True,
        )
        values.update(overrides)
        return cls(**values)


# --------------------------------------------------------------------------- small helpers


def _key(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(kept) / len(kept) if kept else None


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file, so a reader (the app) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_table(
    out_dir: Path, stem: str, rows: list[dict[str, Any]], columns: Sequence[str] | None = None
) -> list[Path]:
    """``<stem>.csv`` and ``<stem>.json`` ({"rows": [...]}); nothing (and old copies removed) when empty."""
    paths = [out_dir / f"{stem}.csv", out_dir / f"{stem}.json"]
    if not rows:
        for path in paths:
            path.unlink(missing_ok=True)
        return []
    if columns is None:
        columns = list(dict.fromkeys(c for row in rows for c in row))
    from io import StringIO

    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c)) for c in columns})
    _atomic_write(paths[0], buffer.getvalue())
    clean = [{c: row.get(c) for c in columns} for row in rows]
    _atomic_write(paths[1], json.dumps({"table": stem, "rows": clean}, indent=1, default=str) + "\n")
    return paths


def _read_jsonl_rows(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (a run killed mid-write) is skipped."""
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "id" in row:
                rows.append(row)
    return rows


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    _atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


class SampleStore:
    """One JSONL of finished samples, kept to exactly the planned ids, each id with its own settings key.

    A key covers only what its sample depends on (say, the LLM alone for the full context), so
    changing one compressor's weights leaves the other methods' rows in place. Rows that do not
    belong (another key, or an id outside the plan) go to ``.cache/<stem>.<key>.jsonl``, and rows
    of a planned key found there come back.
    """

    def __init__(self, path: Path, planned: dict[str, str]) -> None:
        self.path, self.planned = path, dict(planned)
        self.cache_dir = path.parent / ".cache"
        found: dict[str, dict] = {}
        elsewhere: dict[str, list[dict]] = defaultdict(list)
        mine_cached = [self._cache_path(key) for key in sorted(set(self.planned.values()))]
        for row in [r for p in mine_cached for r in _read_jsonl_rows(p)] + _read_jsonl_rows(path):
            if self.planned.get(row["id"]) == row.get("config"):
                found[row["id"]] = row
            else:
                elsewhere[str(row.get("config"))].append(row)
        for cached in mine_cached:
            cached.unlink(missing_ok=True)
        for other_key, rows in elsewhere.items():
            self._stash(other_key, [r for r in rows if r["id"] not in found])
        self.rows = found
        self.rewrite()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / f"{self.path.stem}.{key}.jsonl"

    def _stash(self, key: str, rows: list[dict]) -> None:
        if not rows:
            return
        path = self._cache_path(key)
        merged = {r["id"]: r for r in _read_jsonl_rows(path) + rows}
        _write_jsonl(path, merged.values())

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.rows

    def add(self, row: dict) -> None:
        row = {**row, "config": self.planned[row["id"]]}
        self.rows[row["id"]] = row
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()

    def ordered(self) -> list[dict]:
        return [self.rows[i] for i in self.planned if i in self.rows]

    def rewrite(self) -> None:
        _write_jsonl(self.path, self.ordered())


# --------------------------------------------------------------------------- methods under test


@dataclass
class Method:
    """A label in the results, the compressor instance that runs it, and its method name there."""

    label: str
    cc: Any  # ContextCompressor
    method: str  # "icformer" | "icae" | "full"

    @property
    def model(self):
        return {"icformer": self.cc.icformer, "icae": self.cc.icae}.get(self.method)

    @property
    def trained(self) -> bool:
        return True if self.model is None else bool(self.model.trained)

    @property
    def k(self) -> int | None:
        return None if self.model is None else int(self.model.config.num_digest_tokens)

    @property
    def L(self) -> int | None:  # noqa: N802
        return None if self.model is None else int(self.model.config.chunk_size)

    def fingerprint(self) -> str:
        """The weights' fingerprint, plus the prompt style when not the default (it changes every output)."""
        from .llm import weights_fingerprint

        if self.model is None:
            return "none"
        style = prompt_style(self.model)
        return weights_fingerprint(self.model) + ("" if style == "default" else f"+{style}")


REPO_ROOT = Path(__file__).resolve().parent.parent


def default_results_dir() -> Path:
    from .defaults import ASSETS_DIR

    return ASSETS_DIR / "results"


def default_no_pretrain_dir() -> Path:
    from .defaults import ASSETS_DIR

    return ASSETS_DIR / "checkpoints" / NO_PRETRAIN


def load_no_pretrain(cc, path: str | Path | None, *, required: bool = False):
    """IC-Former fine-tuned without pre-training, on `cc`'s LLM; None when absent or unfit."""
    from .compressor import ContextCompressor
    from .modeling_icformer import ICFormerModel

    if path is None or not (Path(path) / "config.json").is_file():
        if required:
            raise FileNotFoundError(f"no IC-Former checkpoint at {path}")
        return None
    model = ICFormerModel.from_pretrained(path)
    if model.config.hidden_size != cc.target.hidden_size:
        message = (f"{path} has hidden size {model.config.hidden_size}, the LLM {cc.target.name} "
                   f"{cc.target.hidden_size}: not evaluated")
        if required:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
        return None
    return ContextCompressor(cc.target, model.to(cc.target.dtype), None, max_context_tokens=cc.max_context_tokens)


def build_methods(cc, no_pretrain=None) -> dict[str, Method]:
    methods = {"icformer": Method("icformer", cc, "icformer")}
    if cc.icae is not None:
        methods["icae"] = Method("icae", cc, "icae")
    methods["full"] = Method("full", cc, "full")
    if no_pretrain is not None:
        methods[NO_PRETRAIN] = Method(NO_PRETRAIN, no_pretrain, "icformer")
    return methods


@dataclass(frozen=True)
class Variant:
    """A row of the QA tables: a method reading its own sample's context, or a no-information floor.

    `reads` is "own" (the method itself), "nothing" (`none`: the question alone, in the full
    context's prompt) or "partner" (`<method>-swapped`: the method's vectors of another context
    of the same task). A method's score minus its floors is what its vectors contribute.
    """

    label: str
    method: Method
    reads: str

    @property
    def kind(self) -> str:
        return "method" if self.reads == "own" else "floor"


def build_variants(methods: dict[str, Method]) -> list[Variant]:
    own = [Variant(label, m, "own") for label, m in methods.items()]
    floors = [Variant(NONE, methods["full"], "nothing")]
    floors += [Variant(label + SWAPPED, m, "partner") for label, m in methods.items() if m.model is not None]
    return own + floors


# --------------------------------------------------------------------------- data


def select_questions(rows: list[dict], n: int, *, seed: int,
                     accept: Callable[[dict], bool]) -> list[tuple[dict, dict | None]]:
    """`n` (question, partner) pairs: a seeded shuffle, taking the tasks in turn; a smaller n is a prefix.

    A question's partner is the next accepted row of its task's shuffle with another context: the
    `swapped` floor answers the question from the partner's compressed context. None when the task
    has no other context.
    """
    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: str(r["id"])):
        by_task[str(row.get("task", "all"))].append(row)
    for task, group in by_task.items():
        random.Random(f"{seed}:qa:{task}").shuffle(group)

    verdicts: dict[int, bool] = {}

    def fits(row: dict) -> bool:  # accept() may tokenise: once per row
        if id(row) not in verdicts:
            verdicts[id(row)] = accept(row)
        return verdicts[id(row)]

    queues = {t: (r for r in by_task[t] if fits(r)) for t in sorted(by_task)}
    chosen: list[dict] = []
    while len(chosen) < n and queues:
        for task in list(queues):
            if len(chosen) >= n:
                break
            row = next(queues[task], None)
            if row is None:
                del queues[task]
            else:
                chosen.append(row)
    position = {id(r): i for group in by_task.values() for i, r in enumerate(group)}
    pairs = []
    for row in chosen:
        group, start, context = by_task[str(row.get("task", "all"))], position[id(row)], _normalised(row["input"])
        following = (group[(start + j) % len(group)] for j in range(1, len(group)))
        pairs.append((row, next((r for r in following if _normalised(r["input"]) != context and fits(r)), None)))
    return pairs


def _normalised(text: str) -> str:
    return " ".join(str(text).split()).lower()


class TextSource:
    """Token streams of whole documents from pretrain_valid.jsonl, windows cut from them by seed."""

    def __init__(self, rows: list[dict], tokenizer) -> None:
        docs: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            docs[str(row.get("document", row.get("id")))].append(row)
        self.streams = []
        for name in sorted(docs):
            text = "\n\n".join(r["text"] for r in sorted(docs[name], key=lambda r: str(r.get("id", ""))))
            self.streams.append(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if not any(self.streams):
            raise ValueError("pretrain_valid.jsonl has no text")
        self.joined = [t for s in self.streams for t in s]

    def window(self, length: int, rng: random.Random) -> list[int]:
        fitting = [s for s in self.streams if len(s) >= length]
        stream = rng.choice(fitting) if fitting else self.joined
        if len(stream) < length:
            raise ValueError(f"not enough validation text for a {length}-token window ({len(stream)} tokens)")
        start = rng.randint(0, len(stream) - length)
        return list(stream[start:start + length])


def allowed_ids(tokenizer, vocab: int) -> list[int]:
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


# --------------------------------------------------------------------------- batched greedy decoding


class _FirstLine:
    """A stopping criterion: a sequence is done once its text, past leading blanks, has a line break."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        return torch.tensor(["\n" in t.lstrip() for t in texts], dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_batch(cc, items: Sequence[tuple[Any, Layout, torch.Tensor]], max_new_tokens: int, *,
                   first_line: bool = False) -> list[tuple[list[int], str]]:
    """Greedy answers to several prompts in one left-padded batch: (new token ids, text) each.

    `items` are (compressor model or None, layout, vectors): the inputs `ContextCompressor.answer`
    and `.reconstruct` build, decoded together because a CPU decodes 8 sequences in about a third
    of the time of 8 one by one. `first_line` stops a sequence at its first line break and keeps
    only that line (the short-answer protocol).
    """
    from transformers import GenerationConfig, StoppingCriteriaList

    target, tokenizer = cc.target, cc.tokenizer
    embeds = [
        assemble(target.embed, layout, vectors.to(device=target.device, dtype=target.dtype),
                 model.task_embedding(layout.task) if layout.task else None)
        for model, layout, vectors in items
    ]
    width = max(e.shape[0] for e in embeds)
    batch = torch.zeros(len(embeds), width, embeds[0].shape[1], dtype=cc.llm.dtype, device=target.device)
    mask = torch.zeros(len(embeds), width, dtype=torch.long, device=target.device)
    for i, e in enumerate(embeds):  # left padding: every prompt ends where generation starts
        batch[i, width - e.shape[0]:] = e
        mask[i, width - e.shape[0]:] = 1
    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=pad)
    criteria = StoppingCriteriaList([_FirstLine(tokenizer)]) if first_line else None
    with cc._decoder():
        out = cc.llm.generate(inputs_embeds=batch, attention_mask=mask, generation_config=config,
                              stopping_criteria=criteria)
    results = []
    for row in out.tolist():
        ids = list(itertools.takewhile(lambda t: t not in stops, row))
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        results.append((ids, text.split("\n")[0].strip() if first_line else text))
    return results


# --------------------------------------------------------------------------- measuring one sample


@torch.no_grad()
def encode_timed(method: Method, ids: list[int]) -> tuple[torch.Tensor, float]:
    """The vectors the LLM reads for exact token ids (random sequences do not survive decode/encode)."""
    from .compressor import encode
    from .timing import now

    start = now(method.cc.device)
    vectors = encode(method.model, method.cc.target, [ids])[0]
    return vectors, now(method.cc.device) - start


@torch.no_grad()
def reconstruction_ce(method: Method, ids: list[int], scored: int) -> float:
    """Mean token cross-entropy (nats) of the first `scored` tokens of `ids` (+ EOS when that is all
    of them) given the method's reconstruction prompt ([vectors][AE]<bos> in the default style),
    teacher-forced, the compressor reading all of `ids`."""
    from .objectives import CompressionObjective, autoencoding_example

    example = autoencoding_example(method.cc.tokenizer, ids, prompt_style(method.model))
    if scored < len(ids):
        example = replace(example, target_ids=list(ids[:scored]))
    loss, _ = CompressionObjective(method.model, method.cc.target)([example])
    return float(loss)


def qa_scores(prediction: str, references: list[str]) -> dict[str, float]:
    from .metrics import rouge_scores, squad_scores

    rouge = rouge_scores([prediction], [references])
    scores = {f"{t}_{s}": float(rouge[f"{t}_{name}"]) for t in ("rouge1", "rouge2", "rougeL")
              for s, name in (("p", "precision"), ("r", "recall"), ("f", "f1"))}
    squad = squad_scores([prediction], [references])
    scores.update(exact_match=float(squad["exact_match"]), f1=float(squad["f1"]))
    return scores


# --------------------------------------------------------------------------- summaries


def _with_interval(summary: dict[str, Any], name: str, values: list[float], resamples: int, seed: int) -> None:
    """`summary[name]` = the mean of `values`, and `name_lo` / `name_hi` its bootstrap 95% interval."""
    from .metrics import bootstrap_ci

    kept = [float(v) for v in values if v is not None]
    summary[name] = _mean(kept)
    summary[f"{name}_lo"], summary[f"{name}_hi"] = bootstrap_ci(kept, resamples=resamples, seed=seed)


def summarise_qa(samples: list[dict], variants: Sequence[Variant], by: str | None, *, resamples: int,
                 seed: int) -> list[dict]:
    """One row per (dataset, method or floor): mean scores with intervals, and each method's paired
    gain over its floors (`f1_over_none`: per question, its F1 minus the `none` F1, averaged)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for sample in samples:
        groups["all" if by is None else str(sample.get(by, "all"))].append(sample)
    out = []
    for dataset in sorted(groups):
        group = groups[dataset]
        for variant in variants:
            mine = [s for s in group if variant.label in s["answers"]]
            if not mine:
                continue
            answers = [s["answers"][variant.label] for s in mine]
            summary: dict[str, Any] = dict(method=variant.label, dataset=dataset, kind=variant.kind, n=len(answers))
            for score in QA_SCORES:
                _with_interval(summary, score, [a.get(score) for a in answers], resamples, seed)
            if variant.kind == "method":
                for floor, name in ((NONE, "none"), (variant.label + SWAPPED, "swapped")):
                    for score in SIGNAL_SCORES:
                        gains = [s["answers"][variant.label][score] - s["answers"][floor][score]
                                 for s in mine if floor in s["answers"]]
                        _with_interval(summary, f"{score}_over_{name}", gains, resamples, seed)
            summary.update(
                num_vectors=_mean(a.get("num_vectors") for a in answers),
                k=variant.method.k,
                mean_context_tokens=_mean(s.get("num_tokens") for s in mine),
                trained=answers[0].get("trained"),
                compress_s=_mean(a.get("timings", {}).get("compress_s") for a in answers),
                new_tokens=_mean(a.get("timings", {}).get("new_tokens") for a in answers),
            )
            out.append(summary)
    return out


def _triple(name: str) -> tuple[str, str, str]:
    return name, f"{name}_lo", f"{name}_hi"


SIGNAL_SCORES = ("f1", "rougeL_f")
SIGNAL_COLUMNS = tuple(c for score in SIGNAL_SCORES for floor in ("none", "swapped")
                       for c in _triple(f"{score}_over_{floor}"))
QA_COLUMNS = ("method", "dataset", "kind", "n", *(c for s in QA_SCORES for c in _triple(s)), *SIGNAL_COLUMNS,
              "num_vectors", "k", "mean_context_tokens", "trained", "compress_s", "new_tokens")
_REC_SCORES = (*_triple("bleu"), "corpus_bleu", *_triple("ce"), *_triple("token_accuracy"))
REC_COLUMNS = ("method", "length_bucket", *_REC_SCORES, "n", "num_vectors", "mean_tokens", "scored_tokens",
               "trained", "compress_s")
RAND_COLUMNS = ("method", "kind", "length", *_REC_SCORES, "n", "num_vectors", "scored_tokens", "trained",
                "compress_s")
PVO_COLUMNS = ("table", "setting", "metric", "paper", "ours", "ours_lo", "ours_hi", "note", "trained")
ATTENTION_COLUMNS = ("method", "layer", "n", "order_correlation", "in_order", "window_mass", "uniform_window_mass",
                     "context_mass", "trained")
TABLE_COLUMNS = dict(qa_summary=QA_COLUMNS, qa_by_task=QA_COLUMNS, reconstruction_by_length=REC_COLUMNS,
                     reconstruction_by_randomness=RAND_COLUMNS, paper_vs_ours=PVO_COLUMNS,
                     attention_by_layer=ATTENTION_COLUMNS)
# The attention analysis is cheap and deterministic, so it is recomputed every run on this many
# seeded windows of one chunk each (no samples to cache).
ATTENTION_WINDOWS = 8


def _ordered_labels(labels: Iterable[str]) -> list[str]:
    first = [m for m in ("icformer", "icae", "full", NO_PRETRAIN) if m in labels]
    return first + sorted(m for m in labels if m not in first)


def summarise_reconstruction(rows: list[dict], group: str, column: str | None = None, *, resamples: int,
                             seed: int) -> list[dict]:
    """Per (method, `group` value, shown as `column`): mean sentence BLEU, CE and token accuracy with
    intervals, and corpus BLEU, of one row per (window, method)."""
    from .metrics import bleu_score

    groups: dict[tuple[str, Any], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], row[group])].append(row)
    order = {label: i for i, label in enumerate(_ordered_labels({g[0] for g in groups}))}
    kinds = {k: i for i, k in enumerate(RANDOMNESS_KINDS)}
    out = []
    for (label, value), results in sorted(groups.items(), key=lambda item: (order[item[0][0]],
                                                                             kinds.get(item[0][1], item[0][1]))):
        summary: dict[str, Any] = {"method": label, column or group: value, "length": results[0]["num_tokens"]}
        for score in ("bleu", "ce", "token_accuracy"):
            _with_interval(summary, score, [r.get(score) for r in results], resamples, seed)
        summary.update(
            corpus_bleu=bleu_score([r["text"] for r in results], [r["reference"] for r in results]),
            n=len(results),
            num_vectors=_mean(r.get("num_vectors") for r in results),
            mean_tokens=_mean(r["num_tokens"] for r in results),
            scored_tokens=_mean(r.get("scored_tokens") for r in results),
            trained=results[0].get("trained"),
            compress_s=_mean(r.get("compress_s") for r in results),
        )
        out.append(summary)
    return out


def _our_numbers(qa: list[dict], rec: list[dict], rand: list[dict], bench: list[dict], flops: dict[str, float],
                 samples: list[dict], *, resamples: int, seed: int) -> tuple[dict, dict]:
    """(ours: key -> value, intervals: key -> (low, high)) for the keys of PAPER_NUMBERS."""
    from .metrics import bootstrap_ratio_ci

    ours: dict[str, float] = dict(flops)
    intervals: dict[str, tuple] = {}
    for row in qa:
        for metric in QA_SCORES:
            if row.get(metric) is not None:
                ours[f"qa:{row['method']}:{metric}"] = row[metric]
                intervals[f"qa:{row['method']}:{metric}"] = (row.get(f"{metric}_lo"), row.get(f"{metric}_hi"))
    for a, b in (("icformer", "icae"), ("icformer", "full")):
        for metric in ("rouge1_f", "rouge2_f", "rougeL_f"):
            x, y = ours.get(f"qa:{a}:{metric}"), ours.get(f"qa:{b}:{metric}")
            if x is not None and y:
                key = f"qa-ratio:{a}:{b}:{metric}"
                ours[key] = x / y
                pairs = [(s["answers"][a][metric], s["answers"][b][metric]) for s in samples
                         if a in s["answers"] and b in s["answers"]]
                intervals[key] = bootstrap_ratio_ci([p[0] for p in pairs], [p[1] for p in pairs],
                                                    resamples=resamples, seed=seed)
    for prefix, rows, group in (("rec", rec, "length_bucket"), ("rand", rand, "kind")):
        for row in rows:
            key = f"{prefix}:{row['method']}:{row[group]}"
            ours[key], intervals[key] = row["bleu"], (row.get("bleu_lo"), row.get("bleu_hi"))
    memory: dict[str, list[float]] = defaultdict(list)
    for row in bench:
        prefix = f"bench:{row['batch_size']}x{row['length']}:{row['method']}"
        for column in ("compress_s", "speedup_vs_icae", "total_speedup_vs_full"):
            if row.get(column) not in (None, ""):
                ours[f"{prefix}:{column}"] = float(row[column])
        if row.get("memory_kind") == "cuda_peak" and row.get("memory_bytes"):
            memory[row["method"]].append(float(row["memory_bytes"]) / 1e9)
    for method, values in memory.items():
        ours[f"memory:{method}:min"], ours[f"memory:{method}:max"] = min(values), max(values)
    return ours, intervals


def paper_vs_ours(ours: dict[str, float], notes: dict[str, str], trained: dict[str, bool],
                  intervals: dict[str, tuple] | None = None) -> list[dict]:
    """PAPER_NUMBERS beside ours; `ours_lo`/`ours_hi` are bootstrap intervals of our quality means
    (speed, FLOPs and memory are single measurements or formulas: none)."""
    intervals = intervals or {}
    rows = []
    for table, setting, metric, paper, key, depends in PAPER_NUMBERS:
        value = ours.get(key) if key else None
        flags = [trained.get(m) for m in depends]
        is_trained = None if not depends or None in flags or value is None else all(flags)
        if key is None:
            note = "no counterpart here (one k per checkpoint)"
        elif value is None:
            note = notes.get(f"{table}:missing", "not measured in this run")
        else:
            note = notes.get(table, "") + ("; random weights (untrained)" if is_trained is False else "")
        low, high = intervals.get(key, (None, None)) if value is not None else (None, None)
        rows.append(dict(table=table, setting=setting, metric=metric, paper=paper, ours=value, ours_lo=low,
                         ours_hi=high, note=note, trained=is_trained))
    return rows


def flops_numbers(cc) -> dict[str, float]:
    """Analytic compression FLOPs at 512 tokens for our model, and the paper's formulas at its sizes."""
    from .flops import icae_flops, icformer_flops, paper_icae_flops, paper_icformer_flops

    out = {
        "flops:icae:llama2": float(paper_icae_flops(**LLAMA2_7B, layers=32)),
        "flops:icformer:llama2": float(paper_icformer_flops(**LLAMA2_7B, layers=3)),
        "flops:icformer": float(icformer_flops(cc.icformer.config, 512).paper),
    }
    if cc.icae is not None:
        out["flops:icae"] = float(icae_flops(cc.icae, 512).paper)
        out["flops:ratio"] = out["flops:icae"] / out["flops:icformer"]
    return out


# --------------------------------------------------------------------------- provenance


def default_command() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "__main__.py" and Path(argv[0]).parent.name == "icformer":
        return "python -m icformer " + shlex.join(argv[1:])
    return shlex.join(argv)


# --------------------------------------------------------------------------- the run


class _Evaluation:
    def __init__(self, cc, out_dir: Path, data_dir: Path, settings: EvalSettings, methods: dict[str, Method],
                 command: str, progress: bool, mode: str) -> None:
        self.cc, self.out, self.data_dir, self.s, self.mode = cc, out_dir, data_dir, settings, mode
        self.methods, self.command, self.progress = methods, command, progress
        self.variants = build_variants(methods)
        self.rec_methods = {k: m for k, m in methods.items() if k in ("icformer", "icae")}
        self._written = 0.0  # when the summaries were last written
        self._attention: list[dict] | None = None
        self._compressed: dict[tuple[str, str], tuple[torch.Tensor, float]] = {}
        self._windows: dict[str, list[int]] = {}
        self.started = time.time()
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, str] = {}
        self.bench_rows: list[dict] = []
        self.bench_note = ""
        self._text: TextSource | None = None
        self.bench_from: str | Path | None = None
        self.bench_source: str | None = None  # where the benchmark rows came from
        self.earlier: list[dict[str, Any]] = []
        self.source = source_commit()  # before this run writes its outputs, which may be tracked files
        self._fingerprints = {label: m.fingerprint() for label, m in methods.items()}
        self.qa_store: SampleStore | None = None
        self.questions: list[dict] = []
        self.qa_plan: list[tuple[str, dict, Variant]] = []
        self.rec_store: SampleStore | None = None
        self.rec_plan: list = []

    # --- plumbing
    def bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=not self.progress, mininterval=2.0, dynamic_ncols=True,
                    file=sys.stderr)

    def data(self, name: str) -> Path:
        path = self.data_dir / name
        if not path.is_file():
            raise FileNotFoundError(
                f"no {name} in {self.data_dir}: run `python -m icformer prepare-data --out {self.data_dir}`")
        return path

    def text_source(self) -> TextSource:
        if self._text is None:
            from .io import read_jsonl

            self._text = TextSource(read_jsonl(self.data("pretrain_valid.jsonl")), self.cc.tokenizer)
        return self._text

    @property
    def randomness_length(self) -> int:
        return self.s.randomness_length or self.cc.icformer.config.chunk_size

    # --- question answering
    def open_qa(self) -> None:
        """Choose the questions and their partners, plan every (question, method or floor) and open the store."""
        from .io import read_jsonl

        files = [self.data_dir / name for name in self.s.qa_files if (self.data_dir / name).is_file()]
        if not files:
            self.data(self.s.qa_files[0])  # raises, naming the command that writes it
        rows = [r for path in files for r in read_jsonl(path)
                if r.get("task") != "continuation" and r.get("prompt") and r.get("answer") is not None]
        lengths: dict[str, int] = {}

        def fits(row: dict) -> bool:
            try:
                lengths[str(row["id"])] = len(self.cc.tokenize(row["input"]))
            except ValueError:
                return False
            return lengths[str(row["id"])] <= self.s.qa_max_context_tokens

        self.questions = []
        for row, partner in select_questions(rows, self.s.qa_samples, seed=self.s.seed, accept=fits):
            self.questions.append(dict(
                id=str(row["id"]), dataset=str(row.get("task", "all")), context=row["input"], question=row["prompt"],
                reference=str(row["answer"]), references=[str(a) for a in (row.get("answers") or [row["answer"]])],
                num_tokens=lengths[str(row["id"])], partner=None if partner is None else dict(
                    id=str(partner["id"]), context=partner["input"]),
            ))
        self.qa_plan = []
        planned: dict[str, str] = {}
        for variant in self.variants:
            key = _key(dict(section="qa", llm=self.cc.target.fingerprint, model=self._fingerprints[variant.method.label],
                            reads=variant.reads, max_new_tokens=self.s.max_new_tokens,
                            instruction=SHORT_ANSWER_INSTRUCTION, stop="first line"))
            for q in self.questions:
                read = self._qa_context(variant, q)
                if read is None:
                    continue  # no partner: no swapped floor for this question
                sample_id = f"{q['id']}|{variant.label}|" + _key(dict(read=read, question=q["question"],
                                                                       references=q["references"]))[:8]
                self.qa_plan.append((sample_id, q, variant))
                planned[sample_id] = key
        order = {q["id"]: i for i, q in enumerate(self.questions)}
        self.qa_plan.sort(key=lambda p: order[p[1]["id"]])
        self.qa_store = SampleStore(self.out / FILES["qa_answers"], dict(sorted(planned.items(),
                                                                                key=lambda kv: order[kv[0].split("|")[0]])))
        self.counts["qa"] = (f"{len(self.questions)} questions x {len(self.variants)} methods and floors: "
                             f"{len(self.qa_plan)} answers ({len(self.qa_store.rows)} finished earlier)")

    @staticmethod
    def _qa_context(variant: Variant, question: dict) -> str | None:
        """The text a variant's LLM reads for `question` ("" for none; None: nothing to read)."""
        if variant.reads == "own":
            return question["context"]
        if variant.reads == "partner":
            return question["partner"] and question["partner"]["context"]
        return ""

    def _vectors_for(self, method: Method, text: str) -> tuple[torch.Tensor, float]:
        """Vectors of `text` by `method` (compressed once per run: a context is also another's partner)."""
        if method.model is None:
            return encode_timed(method, self.cc.tokenize(text)) if text else (self.cc.target.embed(
                torch.zeros(0, dtype=torch.long, device=self.cc.device)), 0.0)
        cache_key = (method.label, text)
        if cache_key not in self._compressed:
            self._compressed[cache_key] = encode_timed(method, self.cc.tokenize(text))
        return self._compressed[cache_key]

    def run_qa(self) -> None:
        store, size = self.qa_store, self.s.batch_size
        todo = [p for p in self.qa_plan if p[0] not in store]
        self.counts["qa"] = (f"{len(self.questions)} questions x {len(self.variants)} methods and floors: "
                             f"{len(self.qa_plan)} answers ({len(self.qa_plan) - len(todo)} reused)")
        with self.bar(len(self.qa_plan), "qa") as bar:
            bar.update(len(self.qa_plan) - len(todo))
            for variant in sorted(self.variants, key=self._priority):
                # Similar lengths decode together: less padding.
                jobs = sorted((p for p in todo if p[2] is variant), key=lambda p: p[1]["num_tokens"])
                model = variant.method.model
                for start in range(0, len(jobs), size):
                    chunk = jobs[start:start + size]
                    inputs = [self._vectors_for(variant.method, self._qa_context(variant, q)) for _, q, _ in chunk]
                    layouts = [question_layout(self.cc.tokenizer, short_answer_question(q["question"]),
                                               task=None if model is None else "FT", style=prompt_style(model))
                               for _, q, _ in chunk]
                    outputs = generate_batch(self.cc, [(model, layout, vectors) for layout, (vectors, _) in
                                                       zip(layouts, inputs)], self.s.max_new_tokens, first_line=True)
                    for (sample_id, q, _), (vectors, seconds), (ids, text) in zip(chunk, inputs, outputs):
                        store.add(dict(id=sample_id, question_id=q["id"], variant=variant.label, kind=variant.kind,
                                       text=text, **qa_scores(text, q["references"]), num_vectors=len(vectors),
                                       trained=variant.method.trained,
                                       timings=dict(compress_s=seconds if model is not None else 0.0,
                                                    new_tokens=len(ids))))
                    bar.update(len(chunk))
                    self.progress_written()

    def _priority(self, variant: Variant) -> int:
        """Computing order: the ceiling and `none` first, then each method just before its swapped floor,
        so a run stopped early has methods with their floors rather than methods without."""
        if variant.label in ("full", NONE):
            return ("full", NONE).index(variant.label) - 2
        return 2 * list(self.methods).index(variant.method.label) + (variant.reads == "partner")

    def qa_samples(self) -> list[dict]:
        """One row per question with every answer (qa_samples.jsonl, the app's per-sample browser)."""
        answers: dict[str, dict[str, dict]] = defaultdict(dict)
        for row in (self.qa_store.ordered() if self.qa_store else []):
            answers[row["question_id"]][row["variant"]] = {
                k: v for k, v in row.items() if k not in ("id", "question_id", "variant", "config")}
        labels = [v.label for v in self.variants]
        return [dict({k: v for k, v in q.items() if k != "partner"},
                     partner=q["partner"] and q["partner"]["id"],
                     answers={label: answers[q["id"]][label] for label in labels if label in answers[q["id"]]})
                for q in self.questions if answers[q["id"]]]

    # --- reconstruction
    def _plan(self) -> list[tuple[str, dict, Callable[[], list[int]]]]:
        """(id, row fields, ids maker) of every reconstruction sample of these settings."""
        plan = []
        for edge in self.s.length_buckets:
            for i in range(self.s.length_samples):
                def make(edge=edge, i=i):
                    rng = random.Random(f"{self.s.seed}:length:{edge}:{i}")
                    low = max(1, edge - self.s.bucket_width + 1)
                    return self.text_source().window(rng.randint(low, edge), rng)
                plan.append((f"len{edge}-{i:02d}", dict(kind="length", length_bucket=edge), make))
        n = self.randomness_length
        for i in range(self.s.randomness_samples):
            for kind in RANDOMNESS_KINDS:
                def make(kind=kind, i=i):
                    vocab = min(len(self.cc.tokenizer), self.cc.llm.get_input_embeddings().num_embeddings)
                    rng = random.Random(f"{self.s.seed}:randomness:{i}")
                    return randomness_ids(kind, n, rng, self.text_source(), allowed_ids(self.cc.tokenizer, vocab))
                plan.append((f"rand-{kind}-n{n}-{i:02d}", dict(kind="randomness", variant=kind), make))
        return plan

    def open_reconstruction(self) -> None:
        data = sha256_file(self.data("pretrain_valid.jsonl"))
        keys = {label: _key(dict(section="reconstruction", llm=self.cc.target.fingerprint,
                                 model=self._fingerprints[label], extra=self.s.reconstruction_extra_tokens,
                                 cap=self.s.reconstruction_max_new_tokens, width=self.s.bucket_width,
                                 seed=self.s.seed, data=data))
                for label in self.rec_methods}
        self.rec_plan = self._plan()
        planned = {f"{window}|{label}": keys[label] for window, _, _ in self.rec_plan for label in self.rec_methods}
        self.rec_store = SampleStore(self.out / FILES["rec_samples"], planned)
        for kind, section in (("length", "reconstruction"), ("randomness", "randomness")):
            ids = [f"{w}|{label}" for w, fields, _ in self.rec_plan if fields["kind"] == kind for label in self.rec_methods]
            self.counts[section] = (f"{len(ids) // max(1, len(self.rec_methods))} sequences x {len(self.rec_methods)} "
                                    f"methods ({sum(i in self.rec_store for i in ids)} finished earlier)")

    def window_ids(self, window: str, make: Callable[[], list[int]]) -> list[int]:
        if window not in self._windows:
            self._windows[window] = make()
        return self._windows[window]

    def run_reconstruction(self, kind: str) -> None:
        """Reconstruct the planned windows of `kind` ("length" or "randomness") not yet in the store."""
        from .metrics import sentence_bleu

        plan = [p for p in self.rec_plan if p[1]["kind"] == kind]
        store, tokenizer, cap = self.rec_store, self.cc.tokenizer, self.s.reconstruction_max_new_tokens
        todo = [(window, fields, make, label) for window, fields, make in plan for label in self.rec_methods
                if f"{window}|{label}" not in store]
        total = len(plan) * len(self.rec_methods)
        section = "reconstruction" if kind == "length" else "randomness"
        self.counts[section] = f"{len(plan)} sequences x {len(self.rec_methods)} methods ({total - len(todo)} reused)"
        with self.bar(total, section) as bar:
            bar.update(total - len(todo))
            for label, method in self.rec_methods.items():
                jobs = sorted(((w, f, self.window_ids(w, m)) for w, f, m, lab in todo if lab == label),
                              key=lambda job: len(job[2]))
                layout = reconstruction_layout(tokenizer, prompt_style(method.model))
                for start in range(0, len(jobs), self.s.batch_size):
                    chunk = jobs[start:start + self.s.batch_size]
                    limits = [min(len(ids) + self.s.reconstruction_extra_tokens, cap) for _, _, ids in chunk]
                    encoded = [encode_timed(method, ids) for _, _, ids in chunk]
                    outputs = generate_batch(self.cc, [(method.model, layout, v) for v, _ in encoded], max(limits))
                    for (window, fields, ids), (vectors, seconds), (out_ids, _), limit in zip(
                            chunk, encoded, outputs, limits):
                        scored, out_ids = min(len(ids), cap), out_ids[:limit]  # greedy: a shorter limit is a prefix
                        reference = tokenizer.decode(ids[:scored], skip_special_tokens=True).strip()
                        text = tokenizer.decode(out_ids, skip_special_tokens=True).strip()
                        store.add(dict(
                            id=f"{window}|{label}", window=window, method=label, **fields, num_tokens=len(ids),
                            scored_tokens=scored, reference=reference, text=text, bleu=sentence_bleu(text, reference),
                            ce=reconstruction_ce(method, ids, scored),
                            token_accuracy=sum(a == b for a, b in zip(out_ids, ids[:scored])) / scored,
                            num_vectors=len(vectors), trained=method.trained, compress_s=seconds,
                            new_tokens=len(out_ids)))
                    bar.update(len(chunk))
                    self.progress_written()

    # --- benchmark
    def _bench_plan(self) -> dict[str, Any]:
        s = self.s
        if s.bench_quick:
            return dict(quick=True, lengths=None, batch_sizes=None, repeats=None, max_batch_tokens=None)
        return dict(quick=False, lengths=list(s.bench_lengths), batch_sizes=list(s.bench_batch_sizes),
                    repeats=s.bench_repeats, max_batch_tokens=s.bench_max_batch_tokens)

    def _bench_key(self) -> str:
        models = {k: self._fingerprints[k] for k in ("icformer", "icae") if k in self._fingerprints}
        return _key(dict(section="bench", llm=self.cc.target.fingerprint, plan=self._bench_plan(), models=models,
                         threads=torch.get_num_threads(), device=str(self.cc.device)))

    def open_bench(self) -> None:
        """Rows from --bench-from, or saved by an earlier run of these settings; other rows are moved aside."""
        source = Path(self.bench_from).resolve() if self.bench_from is not None else None
        saved = self.out / "bench" / f"{BENCH_STEM}.json"
        if saved.is_file() and saved.resolve() != source:
            try:
                key = json.loads(saved.read_text())["meta"].get("eval_key") or "external"
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                key = "unreadable"
            if key == self._bench_key() and not (source and source.is_file()):
                self.bench_rows = json.loads(saved.read_text()).get("rows", [])
                self.counts["bench"] = f"{len(self.bench_rows)} rows (reused)"
                self.bench_source = self._relative(saved)
                return
            aside = self.out / ".cache" / "bench"
            aside.mkdir(parents=True, exist_ok=True)
            for path in (saved, saved.with_suffix(".csv")):
                if path.is_file():
                    os.replace(path, aside / f"{BENCH_STEM}.{key}{path.suffix}")
        if source is not None and source.is_file():
            self.bench_rows = json.loads(source.read_text())["rows"]
            self.counts["bench"] = f"{len(self.bench_rows)} rows read from {self.bench_from}"
            self.bench_source = self._relative(source)

    def run_bench(self) -> None:
        source = Path(self.bench_from) if self.bench_from is not None else None
        if source is not None and source.is_file():
            saved = json.loads(source.read_text())
            self.bench_rows = saved["rows"]
            self.counts["bench"] = f"{len(self.bench_rows)} rows read from {source}"
            self.bench_source = self._relative(source)
            out = self.out / "bench"
            if source.resolve().parent != out.resolve():  # keep the results folder self-contained
                meta = {**saved.get("meta", {}), "source": str(source)}
                write_table(out, BENCH_STEM, self.bench_rows)
                _atomic_write(out / f"{BENCH_STEM}.json", json.dumps({"meta": meta, "rows": self.bench_rows},
                                                                      indent=1, default=str) + "\n")
                self.bench_source = self._relative(out / f"{BENCH_STEM}.json")
            return
        if self.bench_rows:
            return
        try:
            from .bench import COLUMNS, environment, run_benchmark
        except ImportError as err:
            self.bench_note = f"benchmark not run: icformer.bench is unavailable ({err})"
            return
        if self.cc.icae is None:
            self.bench_note = "benchmark not run: it compares IC-Former with ICAE, and no ICAE is loaded"
            return
        plan = self._bench_plan()
        with self.bar(1, "bench") as bar:
            rows = run_benchmark(self.cc, plan["lengths"], plan["batch_sizes"], plan["repeats"], quick=plan["quick"],
                                 max_batch_tokens=plan["max_batch_tokens"], seed=self.s.seed,
                                 progress=bar.set_postfix_str)
            bar.update(1)
        out = self.out / "bench"
        meta = {**environment(self.cc), "eval_key": self._bench_key(), "plan": plan}
        write_table(out, BENCH_STEM, rows, COLUMNS)
        text = json.dumps({"meta": meta, "rows": rows}, indent=1, default=str)
        _atomic_write(out / f"{BENCH_STEM}.json", text + "\n")
        self.bench_rows = rows
        self.counts["bench"] = f"{len(rows)} rows"
        self.bench_source = self._relative(out / f"{BENCH_STEM}.json")

    def _relative(self, path: Path) -> str:
        """`path` as seen from the results folder, when it lies inside it."""
        try:
            return str(Path(path).resolve().relative_to(self.out.resolve()))
        except ValueError:
            return str(path)

    # --- outputs
    def tables(self) -> dict[str, list[dict]]:
        samples = self.qa_samples()
        rec_rows = self.rec_store.ordered() if self.rec_store else []
        boot = dict(resamples=self.s.bootstrap_resamples, seed=self.s.seed)
        qa = summarise_qa(samples, self.variants, None, **boot)
        rec = summarise_reconstruction([r for r in rec_rows if r["kind"] == "length"], "length_bucket", **boot)
        rand = summarise_reconstruction([r for r in rec_rows if r["kind"] == "randomness"], "variant", "kind", **boot)
        trained = {label: m.trained for label, m in self.methods.items()}
        ours, intervals = _our_numbers(qa, rec, rand, self.bench_rows, flops_numbers(self.cc), samples, **boot)
        tables = dict(
            qa_summary=qa,
            qa_by_task=summarise_qa(samples, self.variants, "dataset", **boot),
            reconstruction_by_length=rec,
            reconstruction_by_randomness=rand,
            paper_vs_ours=paper_vs_ours(ours, self.notes(samples), trained, intervals),
            attention_by_layer=self.attention_rows(),
        )
        return {stem: [{c: row.get(c) for c in TABLE_COLUMNS[stem]} for row in rows] for stem, rows in tables.items()}

    def attention_rows(self) -> list[dict]:
        """The paper's attention analysis (icformer/attention.py) of every IC-Former under test, per layer."""
        from .attention import analyse_ids

        if self._attention is not None:
            return self._attention
        if not (self.data_dir / "pretrain_valid.jsonl").is_file():
            return []
        rng = random.Random(self.s.seed)
        windows = [self.text_source().window(self.cc.icformer.config.chunk_size, rng) for _ in range(ATTENTION_WINDOWS)]
        rows = []
        for label, method in self.methods.items():
            if method.method != "icformer":
                continue
            layers = analyse_ids(method.cc.target, method.model, windows)
            rows += [dict(method=label, layer=i, n=len(windows), trained=method.trained, **asdict(stats))
                     for i, stats in enumerate(layers, 1)]
        self._attention = rows
        return rows

    def notes(self, qa_rows: list[dict]) -> dict[str, str]:
        cfg = self.cc.icformer.config
        setting = f"k={cfg.num_digest_tokens} per L={cfg.chunk_size}"
        tasks = sorted({r["dataset"] for r in qa_rows})
        return {
            "Speed (Table 1)": f"ours on {self.cc.device.type}, the paper on an RTX A6000: "
                               "compare speed-ups, not seconds",
            "Memory:missing": "measured on CUDA only (peak allocation); a CPU run's process RSS is not comparable",
            "FLOPs (Table 2)": f"ours: the formula at our LLM's sizes, {setting}, 512 tokens; "
                               "the Llama-2-7B rows check the formula",
            "PwC QA (Table 4)": f"{setting}; {len(qa_rows)} held-out questions of {', '.join(tasks) or 'no task'}, "
                                f"not PwC; short answers (first line, at most {self.s.max_new_tokens} new tokens; "
                                "the paper: up to 256)",
            "Reconstruction (Fig. 5)": f"{setting} (the paper's 4x ratio); BLEU of the first "
                                       f"{self.s.reconstruction_max_new_tokens} tokens",
            "Text randomness (Table 5)": f"{setting}, {self.randomness_length} tokens; BLEU of the first "
                                         f"{self.s.reconstruction_max_new_tokens}",
        }

    def progress_written(self, every: float = 60.0) -> None:
        """Every `every` seconds of a section, all files as of now (so a killed run's README is current)."""
        if time.time() - self._written >= every:
            self.finish("running")

    def write_summaries(self, every: float = 0.0) -> dict[str, list[dict]] | None:
        """Write every summary table and qa_samples.jsonl; with `every`, only if that many seconds have passed."""
        if every and time.time() - self._written < every:
            return None
        tables = self.tables()
        for stem, rows in tables.items():
            write_table(self.out, stem, rows, TABLE_COLUMNS[stem])
        if self.qa_store is not None:
            _write_jsonl(self.out / FILES["qa_samples"], self.qa_samples())
        self._written = time.time()
        return tables

    def meta(self, status: str) -> dict[str, Any]:
        import transformers

        trained = {label: m.trained for label, m in self.methods.items()}
        untrained = [m for m, ok in trained.items() if not ok]
        commit, dirty = self.source
        cfg = self.cc.icformer.config
        return dict(
            llm=self.cc.target.name,
            llm_hash=self.cc.target.fingerprint[:16],
            device=str(self.cc.device),
            machine=machine_description(self.cc.device),
            trained=not untrained,
            trained_by_method=trained,
            k=cfg.num_digest_tokens,
            L=cfg.chunk_size,
            date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            commit=(commit[:12] + ("-dirty" if dirty else "")) if commit else None,
            command=self.command,
            torch=torch.__version__,
            transformers=transformers.__version__,
            threads=torch.get_num_threads(),
            mode=self.mode,
            status=status,
            seconds=round(time.time() - self.started, 1),
            section_seconds={k: round(v, 1) for k, v in self.seconds.items()},
            samples=self.counts,
            bench_source=self.bench_source,
            # Earlier invocations of the same settings whose finished samples this one reused.
            earlier_invocations=self.earlier,
            total_seconds=round(time.time() - self.started + sum(e.get("seconds", 0) for e in self.earlier), 1),
            settings=asdict(self.s),
            notes=("Numbers of random (untrained) weights for: " + ", ".join(untrained) + ". They test the harness, "
                   "not the method.") if untrained else "All compressors trained.",
        )

    def missing(self) -> dict[str, str]:
        """Sections whose planned samples are not all finished: "<done> of <planned>" each."""
        out = {}
        for section, store in (("qa", self.qa_store), ("reconstruction", self.rec_store)):
            if store is not None and len(store.rows) < len(store.planned):
                out[section] = f"{len(store.rows)} of {len(store.planned)} samples"
        return out

    def finish(self, status: str) -> dict[str, Any]:
        """Write everything; a run that ends with planned samples unfinished is "partial", not "complete"."""
        tables = self.write_summaries()
        missing = self.missing()
        if status == "complete" and missing:
            status = "partial"
        meta = dict(self.meta(status), unfinished=missing)
        shown = {k: v for k, v in meta.items() if k not in RUN_DETAILS}
        details = {"date": meta["date"], "llm_hash": meta["llm_hash"], **{k: meta[k] for k in RUN_DETAILS}}
        _atomic_write(self.out / "meta.json", json.dumps(shown, indent=1, default=str) + "\n")
        _atomic_write(self.out / "run.json", json.dumps(details, indent=1, default=str) + "\n")
        _atomic_write(self.out / "README.md", render_readme(meta, tables, self.bench_rows, self.bench_note,
                                                            self.other_bench_runs()))
        return dict(out_dir=str(self.out), meta=meta, tables=tables, bench=self.bench_rows)

    def other_bench_runs(self) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
        """Benchmark runs committed beside this evaluation's own (e.g. on a GPU): (file, meta, summarised rows)."""
        from .bench import read_runs

        own = (self.out / self.bench_source).resolve() if self.bench_source else None
        return [(self._relative(path), meta, rows) for path, meta, rows in read_runs(self.out / "bench")
                if path.resolve() != own]

    def _earlier_invocations(self) -> list[dict[str, Any]]:
        """The invocations recorded in run.json, when they ran these settings on this LLM."""
        previous: dict[str, Any] = {}
        for name in ("meta.json", "run.json"):
            try:
                found = json.loads((self.out / name).read_text())
            except (OSError, ValueError):
                continue
            previous.update(found if isinstance(found, dict) else {})
        # Which sections ran does not change any sample: an invocation of other sections counts.
        drop_sections = lambda settings: {k: v for k, v in (settings or {}).items() if k != "sections"}  # noqa: E731
        same = (drop_sections(previous.get("settings")) == drop_sections(json.loads(json.dumps(asdict(self.s))))
                and previous.get("llm_hash") == self.cc.target.fingerprint[:16])
        if not same:
            return []
        last = {k: previous.get(k) for k in ("date", "command", "status", "seconds", "samples")}
        return list(previous.get("earlier_invocations", [])) + [last]

    def run(self) -> dict[str, Any]:
        """Open every store (so summaries cover what exists), then compute the chosen sections."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.earlier = self._earlier_invocations()
        wanted = set(self.s.sections)
        if "qa" in wanted or (self.data_dir / "eval.jsonl").is_file():
            self.open_qa()
        if wanted & {"reconstruction", "randomness"} or (self.data_dir / "pretrain_valid.jsonl").is_file():
            self.open_reconstruction()
        self.open_bench()
        self.finish("running")
        steps = {"qa": self.run_qa, "reconstruction": lambda: self.run_reconstruction("length"),
                 "randomness": lambda: self.run_reconstruction("randomness"), "bench": self.run_bench}
        try:
            for section in SECTIONS:
                if section in wanted:
                    start = time.time()
                    steps[section]()
                    self.seconds[section] = time.time() - start
                    self.finish("running")
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (`run`): the files say what finished
            self.finish("partial")
            raise
        for store in (self.qa_store, self.rec_store):
            if store is not None:
                store.rewrite()  # drops torn lines
        return self.finish("complete")


def run_evaluation(
    cc,
    out_dir: str | Path | None = None,
    *,
    quick: bool = False,
    data_dir: str | Path | None = None,
    settings: EvalSettings | None = None,
    no_pretrain: Any = "auto",
    bench_from: str | Path | None = None,
    command: str | None = None,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate `cc` (a ContextCompressor) and write the results schema into `out_dir`.

    `out_dir` defaults to assets/results/ and `data_dir` to the repository's data/ (both
    resolved from this file, not the working directory).

    `quick`: a few minutes on a CPU (see `EvalSettings.quick`); `overrides` are EvalSettings
    fields. `no_pretrain`: "auto" (assets/checkpoints/icformer-no-pretrain when present), a
    checkpoint directory, a ContextCompressor, or None. `bench_from`: a bench.json written by
    `python -m icformer bench` whose rows stand in for the benchmark (when it exists). Returns
    {"out_dir", "meta", "tables", "bench"}: the rows of every summary table as written.
    """
    if settings is None:
        settings = EvalSettings.quick(**overrides) if quick else EvalSettings(**overrides)
    elif overrides:
        settings = replace(settings, **overrides)
    unknown = set(settings.sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    if no_pretrain == "auto":
        no_pretrain = load_no_pretrain(cc, default_no_pretrain_dir())
    elif isinstance(no_pretrain, (str, Path)):
        no_pretrain = load_no_pretrain(cc, no_pretrain, required=True)
    methods = build_methods(cc, no_pretrain)
    command = command or f"run_evaluation(quick={quick}) from Python"
    mode = ("quick" if quick else "full") if not set(overrides) - {"sections"} else "custom"
    out_dir = Path(out_dir) if out_dir is not None else default_results_dir()
    data_dir = Path(data_dir) if data_dir is not None else REPO_ROOT / "data"
    evaluation = _Evaluation(cc, out_dir, data_dir, settings, methods, command, progress, mode)
    evaluation.bench_from = bench_from
    return evaluation.run()


# --------------------------------------------------------------------------- README


def _fmt(value: Any) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict], columns: Sequence[str]) -> str:
    if not rows:
        return "_(no rows)_\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _with_ci(row: dict, name: str) -> str:
    """ "mean [low, high]" of a summary column and its interval."""
    if row.get(name) is None:
        return "–"
    low, high = row.get(f"{name}_lo"), row.get(f"{name}_hi")
    return _fmt(row[name]) + ("" if low is None else f" [{_fmt(low)}, {_fmt(high)}]")


def above_floor(row: dict, floor: str, score: str = "f1") -> bool | None:
    """Whether a method's paired gain over a floor ("none" / "swapped") has an interval above zero
    (None: not measured). The app's note on the Compress & Ask tab reads the same rule."""
    low = row.get(f"{score}_over_{floor}_lo")
    if low in (None, ""):
        return None
    return float(low) > 0


def qa_findings(rows: list[dict], max_new_tokens: int) -> list[str]:
    """Sentences on the ceiling and on each compressor against its floors, from qa_summary rows."""
    by = {r["method"]: r for r in rows}
    out = []
    full, none = by.get("full"), by.get(NONE)
    if full and none:
        above = above_floor(full, "none")
        if above and (full.get("f1_over_none") or 0) >= (none.get("f1") or 0):
            verdict = "well above it"
        elif above:
            verdict = "above it, but by less than the floor itself scores: the ceiling is low"
        else:
            verdict = "not distinguishable from it" if above is False else "not compared"
        longer = (full.get("rougeL_p") or 0) < (full.get("rougeL_r") or 0)
        out.append(
            f"**Ceiling.** With the full context the LLM scores SQuAD F1 {_with_ci(full, 'f1')} (exact match "
            f"{_with_ci(full, 'exact_match')}); the `none` floor, the question alone, scores F1 {_with_ci(none, 'f1')}. "
            f"The paired gain is {_with_ci(full, 'f1_over_none')}: {verdict}. Its ROUGE-L recall is "
            f"{_fmt(full.get('rougeL_r'))} and precision {_fmt(full.get('rougeL_p'))}, with "
            f"{_fmt(full.get('new_tokens'))} new tokens per answer of at most {max_new_tokens}"
            + (": it answers in sentences, not the references' few words, although told to be brief (in the "
               "samples it often restates the question), so token F1 stays far below an extractive reader's; a "
               "frozen 135M chat model is a weak reader, and this is what it does with the whole context."
               if longer else "."))
    for label, row in by.items():
        if row.get("kind") != "method" or label == "full":
            continue
        gains = {floor: above_floor(row, floor) for floor in ("none", "swapped")}
        if gains["none"] and gains["swapped"]:
            verdict = "above both floors: its answers use what its vectors carry"
        elif gains["none"]:
            verdict = ("above `none` but not above its swapped floor: its prompt helps, but any context of the task "
                       "does as well as the right one")
        elif gains["swapped"]:
            verdict = ("above its swapped floor but not above `none`: its answers depend on the context it "
                       "compressed, yet score no better than the question alone")
        else:
            verdict = "not above its floors: its answers do not depend on the context it compressed"
        out.append(f"**{label}**: F1 {_with_ci(row, 'f1')}; minus `none` {_with_ci(row, 'f1_over_none')}, minus "
                   f"`{label}{SWAPPED}` {_with_ci(row, 'f1_over_swapped')}: {verdict}.")
    return out


def render_readme(meta: dict[str, Any], tables: dict[str, list[dict]], bench: list[dict], bench_note: str,
                  other_runs: Sequence[tuple[str, dict[str, Any], list[dict[str, Any]]]] = ()) -> str:
    s, d, q = meta["settings"], EvalSettings(), EvalSettings.quick()
    sections = ", ".join(f"{k} {v / 60:.1f} min" for k, v in meta["section_seconds"].items())
    earlier = ""
    if meta["earlier_invocations"]:
        stopped = any(e.get("status") == "running" for e in meta["earlier_invocations"])
        earlier = (f"; with {len(meta['earlier_invocations'])} earlier invocation(s) of the same settings, whose "
                   "finished samples it reused, " + ("some stopped before recording their time" if stopped else
                                                     f"{meta['total_seconds'] / 60:.1f} minutes in all"))
    untrained = [m for m, ok in meta["trained_by_method"].items() if not ok]
    out = [
        "# Evaluation results",
        "",
        "Generated by `icformer/evaluate.py` from the run described below; every number here comes from the "
        "files in this folder. Rerunning the command regenerates them (finished samples are reused).",
        "",
    ]
    if untrained:
        out += [
            f"> **Random weights.** These compressors were not trained when this ran: **{', '.join(untrained)}**. "
            "Their numbers are those of randomly initialised weights: they show that the harness works, not "
            "how well IC-Former or ICAE compress. `full` is the LLM reading the whole context.",
            "",
        ]
    if meta.get("unfinished"):
        out += [
            "> **Partial run.** Not every planned sample has finished: " + "; ".join(
                f"{section} {count}" for section, count in meta["unfinished"].items())
            + ". The tables cover the finished samples only (see each row's `n`); rerunning the command below "
            "computes the rest and reuses these.",
            "",
        ]
    out += [
        "## Run",
        "",
        f"- Status: {meta['status']} ({meta['mode']} mode); this invocation took {meta['seconds'] / 60:.1f} minutes "
        f"(per section: {sections or '–'}){earlier}",
        f"- Date (UTC): {meta['date']}",
        f"- Machine: {meta['machine']}; device `{meta['device']}`; torch {meta['torch']}, transformers "
        f"{meta['transformers']}, {meta['threads']} torch thread(s)",
        f"- Commit: `{meta['commit']}`",
        f"- Command: `{meta['command']}`",
        f"- LLM: {meta['llm']} (weights hash {meta['llm_hash']}); compressors k={meta['k']} vectors per "
        f"L={meta['L']} tokens",
        "- Trained: " + ", ".join(f"{m} {'yes' if ok else 'no (random weights)'}"
                                  for m, ok in meta["trained_by_method"].items()),
        "",
        "## What was measured",
        "",
        f"- Question answering: {meta['samples'].get('qa', 'not run')}, held out from training: from "
        f"{' and '.join(f'`{f}`' for f in s['qa_files'])} (QA rows only; tasks taken in turn, seed {s['seed']}, "
        f"contexts of at most {s['qa_max_context_tokens']} tokens), decoded {s['batch_size']} at a time (greedy, "
        "left-padded). ROUGE-1/2/L precision/recall/F1 and SQuAD exact match / F1 against all reference answers.",
        f"- Reconstruction: {meta['samples'].get('reconstruction', 'not run')}: {s['length_samples']} window(s) per "
        f"length bucket {', '.join(map(str, s['length_buckets']))} (lengths drawn from the {s['bucket_width']} tokens "
        f"below each edge) of `pretrain_valid.jsonl`; text randomness: {meta['samples'].get('randomness', 'not run')}:"
        f" {s['randomness_samples']} sequence(s) per kind at {s['randomness_length'] or meta['L']} tokens (normal "
        "text, the same tokens reversed, a random start id then +1 per token, uniform random ids; no special "
        "tokens). The compressor reads the whole window; greedy reconstruction of up to the length + "
        f"{s['reconstruction_extra_tokens']} tokens but at most {s['reconstruction_max_new_tokens']} "
        f"(`scored_tokens`): sentence BLEU-4 (averaged), corpus BLEU-4, token accuracy (position-wise) and the "
        "teacher-forced cross-entropy (nats/token) score that prefix of the window (plus EOS when it is all of "
        "it) given the reconstruction prompt (`[vectors][AE]<bos>` in the default prompt style). The cap keeps "
        "the run within an hour; it makes every bucket measure the start of its window, from more or less "
        "compressed content.",
        f"- Benchmark: {meta['samples'].get('bench', bench_note or 'not run')}.",
        "",
        "Sample counts: prefill and generation dominate the cost (about 150 positions per second prefilled on "
        "one core of this 2-core CPU), so the full run's defaults (`EvalSettings`: "
        f"{d.qa_samples} questions, {d.length_samples} windows per bucket, {d.randomness_samples} sequences per "
        f"randomness kind, benchmark batches of at most {d.bench_max_batch_tokens} tokens) take about an "
        "hour there; `--quick` (`EvalSettings.quick()`: "
        f"{q.qa_samples} questions of at most {q.max_new_tokens} new tokens, {q.length_samples} windows per bucket "
        f"{', '.join(map(str, q.length_buckets))}, {q.randomness_samples} sequence per kind at "
        f"{q.randomness_length} tokens, the benchmark's quick preset) takes a few minutes. Each sample is keyed by "
        "what it depends on (the full context and `none` by the LLM alone, a compressor's rows by its weights), "
        "so a new checkpoint recomputes only its own rows.",
        "",
        "## Question answering (`qa_summary.csv`)",
        "",
        "Every method is prompted the same way: the question, then *\"" + SHORT_ANSWER_INSTRUCTION + "\"* on its own "
        f"line; greedy decoding, cut at the first line, at most {s['max_new_tokens']} new tokens. Two floors say what a "
        "method scores when its vectors carry nothing useful: **`none`**, the question alone in the full context's "
        "prompt (what the LLM knows or guesses), and **`<method>-swapped`**, the method answering from its own "
        "vectors of another context of the same task (its prompt and a context of the right kind, without the "
        "answer). A method's useful signal is its score minus its floors, per question (paired), averaged: the "
        "`f1_over_none` and `f1_over_swapped` columns. Brackets: bootstrap 95% intervals "
        f"({s['bootstrap_resamples']} resamples of the questions).",
        "",
        *[line for finding in qa_findings(tables["qa_summary"], s["max_new_tokens"]) for line in (finding, "")],
        markdown_table([dict(r, **{c: _with_ci(r, c) for c in ("f1", "exact_match", "rougeL_f", "f1_over_none",
                                                                "f1_over_swapped")}) for r in tables["qa_summary"]],
                       ("method", "kind", "n", "f1", "exact_match", "rougeL_f", "rougeL_p", "rougeL_r", "f1_over_none",
                        "f1_over_swapped", "num_vectors", "new_tokens", "trained")),
        "Per task (`qa_by_task.csv`; `eval.jsonl`'s tasks are never trained on, `instruct_test.jsonl`'s are the "
        "fine-tuning tasks on contexts never trained on):",
        "",
        markdown_table([dict(r, **{c: _with_ci(r, c) for c in ("f1", "rougeL_f", "f1_over_none")})
                        for r in tables["qa_by_task"]],
                       ("dataset", "method", "n", "f1", "exact_match", "rougeL_f", "f1_over_none")),
        "## Reconstruction vs context length (`reconstruction_by_length.csv`)",
        "",
        markdown_table([dict(r, **{c: _with_ci(r, c) for c in ("bleu", "ce", "token_accuracy")})
                        for r in tables["reconstruction_by_length"]], ("method", "length_bucket", "n", "mean_tokens", "scored_tokens", "bleu",
                                                   "corpus_bleu", "ce", "token_accuracy", "num_vectors", "trained")),
        "## Reconstruction vs text randomness (`reconstruction_by_randomness.csv`)",
        "",
        markdown_table([dict(r, **{c: _with_ci(r, c) for c in ("bleu", "ce", "token_accuracy")})
                        for r in tables["reconstruction_by_randomness"]], ("method", "kind", "length", "n", "scored_tokens", "bleu", "corpus_bleu",
                                                       "ce", "token_accuracy", "trained")),
        f"## Speed and FLOPs (`{meta.get('bench_source') or 'not run'}`)",
        "",
    ]
    if bench:
        out.append(markdown_table(bench, ("method", "batch_size", "length", "compress_s", "prefill_s", "total_s",
                                          "speedup_vs_icae", "total_speedup_vs_full", "flops_exact",
                                          "flops_ratio_vs_icae")))
    else:
        out.append(f"_{bench_note or 'not run'}_\n")
    paper = paper_speed_rows()
    for name, run, rows in other_runs:
        out += [
            f"### Also committed: `{name}`",
            "",
            f"{run.get('device_name', '?')} ({run.get('device', '?')}, {run.get('dtype', '?')}, torch "
            f"{run.get('torch', '?')}), {run.get('llm', '?')}, {str(run.get('date', '?'))[:10]}; one row per batch x "
            "length, the paper's Table 1 (RTX A6000, Llama-2-7B) beside the rows it reports.",
            "",
            markdown_table([{**r, "icformer_ms": r["icformer_s"] * 1e3, "icae_ms": r["icae_s"] * 1e3,
                             **{f"paper_{k}": v for k, v in paper.get((r["batch_size"], r["length"]), {}).items()}}
                            for r in rows],
                           ("batch_size", "length", "icformer_ms", "icae_ms", "speedup", "paper_speedup", "flops_ratio",
                            "total_speedup", "paper_total_speedup", "time_over_flop_bound")),
        ]
    out += [
        "## Attention analysis (`attention_by_layer.csv`)",
        "",
        "The paper's sign of a well pre-trained IC-Former (§4): each last-layer digest attends to 3-5 consecutive "
        f"context tokens, in order. Per layer, over the first chunk of {ATTENTION_WINDOWS} seeded windows of "
        "`pretrain_valid.jsonl` (`icformer/attention.py`): the rank correlation between digest index and the mean "
        "attended position, the share of digests that move forward, and the attention on the best 5-token window "
        "(against uniform attention's share). Order without concentrated mass is not a band.",
        "",
        markdown_table(tables["attention_by_layer"], ATTENTION_COLUMNS),
        "## Paper vs ours (`paper_vs_ours.csv`)",
        "",
        "The paper's numbers are PAPER.md §4 (Llama-2-7B, k=128 per 512 tokens, RTX A6000); ours are a different "
        "LLM, size and machine, so compare ratios (speed-up, FLOPs ratio, IC-Former/ICAE quality) rather than "
        "absolute values. `trained` says whether the compressors a row depends on were trained.",
        "",
        markdown_table([{**r, "ours": _with_ci(r, "ours"),
                         "ours/paper": (r["ours"] / r["paper"]) if r["ours"] is not None else None}
                        for r in tables["paper_vs_ours"]],
                       ("table", "setting", "metric", "paper", "ours", "ours/paper", "trained")),
        "Notes (the `note` column of the CSV):",
        "",
        *sorted({f"- {r['table']}: {r['note']}" for r in tables["paper_vs_ours"] if r["ours"] is not None}),
        "",
        "## Files",
        "",
        "Schema: the docstring of `app/results.py`. `qa_summary`, `qa_by_task`, `reconstruction_by_length`, "
        "`reconstruction_by_randomness`, `paper_vs_ours` and `attention_by_layer` are CSV with a JSON twin; "
        "`qa_answers.jsonl` (one row per question and method or floor) and `reconstruction_samples.jsonl` (one row per "
        "window and method) hold every sample with its scores, `qa_samples.jsonl` the answers grouped per question "
        "(the app's per-sample browser); `meta.json` "
        "records the run (`run.json`: settings, sample counts, earlier invocations); the benchmark rows are "
        f"`{meta.get('bench_source') or 'not here'}` (with its CSV twin). `.cache/` (git-ignored) keeps samples "
        "of other settings for reuse.",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- command line
