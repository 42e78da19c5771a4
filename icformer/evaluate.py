"""`python -m icformer evaluate`: the paper's measurements (PAPER.md §4) for one compressor.

Sections (each resumable, in this order):

* ``qa`` — question answering on a seeded subset of ``eval.jsonl`` for the full context,
  ICAE, IC-Former and (when its checkpoint exists) IC-Former without pre-training: greedy
  decoding, ROUGE-1/2/L precision/recall/F1 (paper Table 4) and SQuAD exact match / F1.
* ``reconstruction`` — autoencoding quality against context length (paper Fig. 5 / Table 3):
  windows of ``pretrain_valid.jsonl`` in token-length buckets (upper edges 100..500); greedy
  reconstruction scored by sentence BLEU-4 (averaged) and corpus BLEU-4, plus the teacher-forced
  cross-entropy of the original tokens given the reconstruction prompt (``[vectors][AE]<bos>`` in
  the default prompt style, ``prompts.py``).
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

Resuming: each finished sample is appended to its JSONL at once, tagged with a key of the
settings that determine it (LLM and compressor weight fingerprints, data file hash, generation
length, seed). A rerun reuses rows whose id and key match and recomputes every summary from
the JSONL. Rows of other settings are moved to ``<out>/.cache/`` (git-ignored), where a later
run with those settings finds them again, so ``--quick`` and the full run can share a folder.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
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

from .data import sha256_file
from .prompts import context_prefix_ids, prompt_style
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
TIMING_KEYS = ("compress_s", "prefill_s", "decode_s", "total_s", "new_tokens")
NO_PRETRAIN = "icformer-no-pretrain"
FILES = dict(qa_samples="qa_samples.jsonl", rec_samples="reconstruction_samples.jsonl")
# meta.json is shown whole above the app's tables, so the bulky run details go to run.json.
RUN_DETAILS = ("settings", "samples", "section_seconds", "bench_source", "earlier_invocations")
# bench/<stem>.csv: not "bench", which `python -m icformer bench --out <results>/bench` writes.
BENCH_STEM = "evaluate"


@dataclass
class EvalSettings:
    """How much to measure. The defaults fill about an hour of 2 shared CPU cores."""

    qa_samples: int = 40  # questions from eval.jsonl (seeded, tasks taken in turn)
    max_new_tokens: int = 48  # QA generation limit (eval answers are short: 5-10 tokens)
    qa_max_context_tokens: int = 512  # the paper's setting is a 512-token context
    length_buckets: tuple[int, ...] = (100, 200, 300, 400, 500)  # upper edges, tokens
    bucket_width: int = 50  # lengths are drawn from (edge - width, edge]
    length_samples: int = 2  # windows per bucket
    randomness_length: int | None = None  # None: IC-Former's chunk size L (the paper: 512 = its L)
    randomness_samples: int = 3  # sequences per kind
    reconstruction_extra_tokens: int = 16  # generate up to num_tokens + this
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
            qa_samples=3, max_new_tokens=16, length_buckets=(100,), length_samples=1,
            randomness_length=32, randomness_samples=1, bench_quick=True,
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
    """One JSONL of finished samples for one settings key, kept to exactly the planned ids.

    Rows that do not belong (another key, or an id outside the plan) go to
    ``.cache/<stem>.<key>.jsonl``, and rows of this key found there come back.
    """

    def __init__(self, path: Path, key: str, planned: Sequence[str]) -> None:
        self.path, self.key, self.planned = path, key, list(planned)
        self.cache_dir = path.parent / ".cache"
        wanted = set(self.planned)
        found: dict[str, dict] = {}
        elsewhere: dict[str, list[dict]] = defaultdict(list)
        mine_cached = self._cache_path(key)
        for row in _read_jsonl_rows(mine_cached) + _read_jsonl_rows(path):
            if row.get("config") == key and row["id"] in wanted:
                found[row["id"]] = row
            else:
                elsewhere[str(row.get("config"))].append(row)
        mine_cached.unlink(missing_ok=True)
        for other_key, rows in elsewhere.items():
            self._stash(other_key, rows)
        self.rows = found
        self.rewrite()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / f"{self.path.stem}.{key}.jsonl"

    def _stash(self, key: str, rows: list[dict]) -> None:
        path = self._cache_path(key)
        merged = {r["id"]: r for r in _read_jsonl_rows(path) + rows}
        _write_jsonl(path, merged.values())

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.rows

    def add(self, row: dict) -> None:
        row = {**row, "config": self.key}
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
    from .compressor import ASSETS_DIR

    return ASSETS_DIR / "results"


def default_no_pretrain_dir() -> Path:
    from .compressor import ASSETS_DIR

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


# --------------------------------------------------------------------------- data


def select_questions(rows: list[dict], n: int, *, seed: int, accept: Callable[[dict], bool]) -> list[dict]:
    """`n` rows: a seeded shuffle, taking the tasks in turn; a smaller n is a prefix of a larger one."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: str(r["id"])):
        by_task[str(row.get("task", "all"))].append(row)
    for task, group in by_task.items():
        random.Random(f"{seed}:qa:{task}").shuffle(group)
    queues = [iter(by_task[t]) for t in sorted(by_task)]
    chosen: list[dict] = []
    while len(chosen) < n and queues:
        for queue in list(queues):
            if len(chosen) >= n:
                break
            row = next((r for r in queue if accept(r)), None)
            if row is None:
                queues.remove(queue)
            else:
                chosen.append(row)
    return chosen


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


# --------------------------------------------------------------------------- measuring one sample


@torch.no_grad()
def compress_ids(method: Method, ids: list[int]):
    """A CompressedContext of exact token ids (random sequences do not survive decode/encode)."""
    from .compressor import encode
    from .context import VERSION, CompressedContext
    from .timing import now

    cc, model = method.cc, method.model
    start = now(cc.device)
    vectors = encode(model, cc.target, [ids])[0]
    seconds = now(cc.device) - start
    metadata = dict(
        method=method.method, llm=cc.target.name, llm_hash=cc.target.fingerprint, hidden_size=cc.target.hidden_size,
        k=method.k, L=method.L, num_chunks=len(vectors) // method.k, num_tokens=len(ids),
        version=VERSION, trained=method.trained, device=str(cc.device), batch_size=1,
    )
    return CompressedContext(vectors=vectors, metadata=metadata, timings={"compress_s": seconds})


@torch.no_grad()
def reconstruction_ce(method: Method, ids: list[int]) -> float:
    """Mean token cross-entropy (nats) of `ids` + EOS given the method's reconstruction prompt
    ([vectors][AE]<bos> in the default style), teacher-forced."""
    from .objectives import CompressionObjective, autoencoding_example

    objective = CompressionObjective(method.model, method.cc.target)
    loss, _ = objective([autoencoding_example(method.cc.tokenizer, ids, prompt_style(method.model))])
    return float(loss)


def reconstruct_sample(method: Method, ids: list[int], extra_tokens: int) -> tuple[dict[str, Any], str]:
    """(scores, text and timings of one method's reconstruction of `ids`; the reference text)."""
    from .metrics import sentence_bleu

    tokenizer = method.cc.tokenizer
    reference = tokenizer.decode(ids, skip_special_tokens=True).strip()
    ctx = compress_ids(method, ids)
    answer = method.cc.reconstruct(ctx, max_new_tokens=len(ids) + extra_tokens)
    matches = sum(a == b for a, b in zip(answer.token_ids, ids))
    return dict(
        text=answer.text,
        bleu=sentence_bleu(answer.text, reference),
        ce=reconstruction_ce(method, ids),
        token_accuracy=matches / len(ids),
        num_vectors=ctx.num_vectors,
        trained=method.trained,
        timings={k: answer.timings.get(k) for k in TIMING_KEYS},
    ), reference


def qa_scores(prediction: str, references: list[str]) -> dict[str, float]:
    from .metrics import rouge_scores, squad_scores

    rouge = rouge_scores([prediction], [references])
    scores = {f"{t}_{s}": float(rouge[f"{t}_{name}"]) for t in ("rouge1", "rouge2", "rougeL")
              for s, name in (("p", "precision"), ("r", "recall"), ("f", "f1"))}
    squad = squad_scores([prediction], [references])
    scores.update(exact_match=float(squad["exact_match"]), f1=float(squad["f1"]))
    return scores


# --------------------------------------------------------------------------- summaries


def summarise_qa(rows: list[dict], methods: dict[str, Method], by: str | None) -> list[dict]:
    """One row per (dataset, method): mean scores and timings; dataset "all" when `by` is None."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups["all" if by is None else str(row.get(by, "all"))].append(row)
    out = []
    for dataset in sorted(groups):
        for label in _ordered_labels({m for r in groups[dataset] for m in r["answers"]}):
            answers = [r["answers"][label] for r in groups[dataset] if label in r["answers"]]
            method = methods.get(label)
            summary: dict[str, Any] = dict(method=label, dataset=dataset)
            summary.update({s: _mean(a.get(s) for a in answers) for s in QA_SCORES})
            summary.update(
                n=len(answers),
                num_vectors=_mean(a.get("num_vectors") for a in answers),
                k=method.k if method else None,
                mean_context_tokens=_mean(r.get("num_tokens") for r in groups[dataset] if label in r["answers"]),
                trained=answers[0].get("trained") if answers else None,
            )
            summary.update({t: _mean(a.get("timings", {}).get(t) for a in answers) for t in TIMING_KEYS})
            out.append(summary)
    return out


QA_COLUMNS = ("method", "dataset", *QA_SCORES, "n", "num_vectors", "k", "mean_context_tokens", "trained", *TIMING_KEYS)
REC_COLUMNS = ("method", "length_bucket", "bleu", "corpus_bleu", "ce", "token_accuracy", "n", "num_vectors",
               "mean_tokens", "trained", "compress_s", "decode_s")
RAND_COLUMNS = ("method", "kind", "length", "bleu", "corpus_bleu", "ce", "token_accuracy", "n", "num_vectors",
                "trained", "compress_s", "decode_s")
PVO_COLUMNS = ("table", "setting", "metric", "paper", "ours", "note", "trained")
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


def summarise_reconstruction(rows: list[dict], group: str, column: str | None = None) -> list[dict]:
    """Per (method, `group` value, shown as `column`): averaged sentence BLEU, corpus BLEU, CE, token accuracy."""
    from .metrics import bleu_score

    groups: dict[tuple[str, Any], list[tuple[dict, dict]]] = defaultdict(list)
    for row in rows:
        for label, result in row["results"].items():
            groups[(label, row[group])].append((row, result))
    order = {label: i for i, label in enumerate(_ordered_labels({g[0] for g in groups}))}
    kinds = {k: i for i, k in enumerate(RANDOMNESS_KINDS)}
    out = []
    def rank(item):
        (label, value), _ = item
        return order[label], kinds.get(value, value)

    for (label, value), pairs in sorted(groups.items(), key=rank):
        results = [r for _, r in pairs]
        summary: dict[str, Any] = {"method": label, column or group: value, "length": pairs[0][0]["num_tokens"]}
        summary.update(
            bleu=_mean(r["bleu"] for r in results),
            corpus_bleu=bleu_score([r["text"] for r in results], [row["reference"] for row, _ in pairs]),
            ce=_mean(r.get("ce") for r in results),
            token_accuracy=_mean(r.get("token_accuracy") for r in results),
            n=len(results),
            num_vectors=_mean(r.get("num_vectors") for r in results),
            mean_tokens=_mean(row["num_tokens"] for row, _ in pairs),
            trained=results[0].get("trained"),
            compress_s=_mean(r.get("timings", {}).get("compress_s") for r in results),
            decode_s=_mean(r.get("timings", {}).get("decode_s") for r in results),
        )
        out.append(summary)
    return out


def _our_numbers(qa: list[dict], rec: list[dict], rand: list[dict], bench: list[dict], flops: dict[str, float]) -> dict:
    ours: dict[str, float] = dict(flops)
    for row in qa:
        for metric in QA_SCORES:
            if row.get(metric) is not None:
                ours[f"qa:{row['method']}:{metric}"] = row[metric]
    for a, b in (("icformer", "icae"), ("icformer", "full")):
        for metric in ("rouge1_f", "rouge2_f", "rougeL_f"):
            x, y = ours.get(f"qa:{a}:{metric}"), ours.get(f"qa:{b}:{metric}")
            if x is not None and y:
                ours[f"qa-ratio:{a}:{b}:{metric}"] = x / y
    for row in rec:
        ours[f"rec:{row['method']}:{row['length_bucket']}"] = row["bleu"]
    for row in rand:
        ours[f"rand:{row['method']}:{row['kind']}"] = row["bleu"]
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
    return ours


def paper_vs_ours(ours: dict[str, float], notes: dict[str, str], trained: dict[str, bool]) -> list[dict]:
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
        rows.append(dict(table=table, setting=setting, metric=metric, paper=paper, ours=value, note=note,
                         trained=is_trained))
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
        self.rec_methods = {k: m for k, m in methods.items() if k in ("icformer", "icae")}
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
        self.qa_chosen: list[dict] = []
        self.qa_lengths: dict[str, int] = {}
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
            from .data import read_jsonl

            self._text = TextSource(read_jsonl(self.data("pretrain_valid.jsonl")), self.cc.tokenizer)
        return self._text

    @property
    def randomness_length(self) -> int:
        return self.s.randomness_length or self.cc.icformer.config.chunk_size

    # --- question answering
    def open_qa(self) -> None:
        """Choose the questions and open their store (finished rows are reused)."""
        from .data import read_jsonl

        path = self.data("eval.jsonl")
        key = _key(dict(section="qa", llm=self.cc.target.fingerprint, models=self._fingerprints,
                        max_new_tokens=self.s.max_new_tokens, data=sha256_file(path)))
        limit = self.s.qa_max_context_tokens

        def fits(row: dict) -> bool:
            try:
                self.qa_lengths[str(row["id"])] = len(self.cc.tokenize(row["input"]))
            except ValueError:
                return False
            return self.qa_lengths[str(row["id"])] <= limit

        self.qa_chosen = select_questions(read_jsonl(path), self.s.qa_samples, seed=self.s.seed, accept=fits)
        self.qa_store = SampleStore(self.out / FILES["qa_samples"], key, [str(r["id"]) for r in self.qa_chosen])

    def run_qa(self) -> None:
        chosen, store = self.qa_chosen, self.qa_store
        todo = [r for r in chosen if str(r["id"]) not in store]
        self.counts["qa"] = f"{len(chosen)} questions ({len(chosen) - len(todo)} reused)"
        with self.bar(len(chosen), "qa") as bar:
            bar.update(len(chosen) - len(todo))
            for row in todo:
                sample_id = str(row["id"])
                references = [str(a) for a in (row.get("answers") or [row["answer"]])]
                answers = {}
                for label, method in self.methods.items():
                    answer = method.cc.answer(row["input"], row["prompt"], method=method.method,
                                              max_new_tokens=self.s.max_new_tokens)
                    answers[label] = dict(
                        text=answer.text, **qa_scores(answer.text, references),
                        num_vectors=_vectors(method, self.qa_lengths[sample_id]),
                        trained=method.trained,
                        timings={k: answer.timings.get(k) for k in (*TIMING_KEYS, "tokens_per_s")},
                    )
                store.add(dict(
                    id=sample_id, dataset=str(row.get("task", "all")), context=row["input"],
                    question=row["prompt"], reference=str(row["answer"]), references=references,
                    num_tokens=self.qa_lengths[sample_id], answers=answers,
                ))
                bar.update(1)
                self.write_summaries()

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
        key = _key(dict(section="reconstruction", llm=self.cc.target.fingerprint,
                        models={k: self._fingerprints[k] for k in self.rec_methods},
                        extra=self.s.reconstruction_extra_tokens, width=self.s.bucket_width, seed=self.s.seed,
                        data=sha256_file(self.data("pretrain_valid.jsonl"))))
        self.rec_plan = self._plan()
        self.rec_store = SampleStore(self.out / FILES["rec_samples"], key, [p[0] for p in self.rec_plan])

    def run_reconstruction(self, kind: str) -> None:
        """Reconstruct the planned samples of `kind` ("length" or "randomness") not yet in the store."""
        plan = [p for p in self.rec_plan if p[1]["kind"] == kind]
        store = self.rec_store
        todo = [p for p in plan if p[0] not in store]
        section = "reconstruction" if kind == "length" else "randomness"
        self.counts[section] = f"{len(plan)} sequences ({len(plan) - len(todo)} reused)"
        with self.bar(len(plan), section) as bar:
            bar.update(len(plan) - len(todo))
            for sample_id, fields, make in todo:
                ids = make()
                results, reference = {}, ""
                for label, method in self.rec_methods.items():
                    results[label], reference = reconstruct_sample(method, ids, self.s.reconstruction_extra_tokens)
                store.add(dict(id=sample_id, **fields, num_tokens=len(ids), reference=reference, results=results))
                bar.update(1)
                self.write_summaries()

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
        qa_rows = self.qa_store.ordered() if self.qa_store else []
        rec_rows = self.rec_store.ordered() if self.rec_store else []
        qa = summarise_qa(qa_rows, self.methods, None)
        rec = summarise_reconstruction([r for r in rec_rows if r["kind"] == "length"], "length_bucket")
        rand = summarise_reconstruction([r for r in rec_rows if r["kind"] == "randomness"], "variant", "kind")
        trained = {label: m.trained for label, m in self.methods.items()}
        ours = _our_numbers(qa, rec, rand, self.bench_rows, flops_numbers(self.cc))
        tables = dict(
            qa_summary=qa,
            qa_by_task=summarise_qa(qa_rows, self.methods, "dataset"),
            reconstruction_by_length=rec,
            reconstruction_by_randomness=rand,
            paper_vs_ours=paper_vs_ours(ours, self.notes(qa_rows), trained),
            attention_by_layer=self.attention_rows(),
        )
        return {stem: [{c: row.get(c) for c in TABLE_COLUMNS[stem]} for row in rows] for stem, rows in tables.items()}

    def attention_rows(self) -> list[dict]:
        """The paper's attention analysis (icformer/attention.py) of every IC-Former under test, per layer."""
        from .attention import analyse_ids

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
            "Reconstruction (Fig. 5)": f"{setting} (the paper's 4x ratio)",
            "Text randomness (Table 5)": f"{setting}, {self.randomness_length} tokens",
            "PwC QA (Table 4)": f"{setting}; {len(qa_rows)} questions of {', '.join(tasks) or 'eval.jsonl'}, not PwC; "
                                f"at most {self.s.max_new_tokens} new tokens",
        }

    def write_summaries(self) -> dict[str, list[dict]]:
        tables = self.tables()
        for stem, rows in tables.items():
            write_table(self.out, stem, rows, TABLE_COLUMNS[stem])
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

    def finish(self, status: str) -> dict[str, Any]:
        tables = self.write_summaries()
        meta = self.meta(status)
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
        same = (previous.get("settings") == json.loads(json.dumps(asdict(self.s)))
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
        for section in SECTIONS:
            if section in wanted:
                start = time.time()
                steps[section]()
                self.seconds[section] = time.time() - start
                self.finish("running")
        for store in (self.qa_store, self.rec_store):
            if store is not None:
                store.rewrite()
        return self.finish("complete")


def _vectors(method: Method, num_tokens: int) -> int:
    """Vectors the LLM reads for a context of `num_tokens`: chunks x k, or the tokens themselves."""
    if method.model is None:
        return num_tokens
    read = num_tokens + len(context_prefix_ids(method.cc.tokenizer, prompt_style(method.model)))
    return math.ceil(read / method.L) * method.k


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
    mode = ("quick" if quick else "full") if not overrides else "custom"
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


def render_readme(meta: dict[str, Any], tables: dict[str, list[dict]], bench: list[dict], bench_note: str,
                  other_runs: Sequence[tuple[str, dict[str, Any], list[dict[str, Any]]]] = ()) -> str:
    s, d, q = meta["settings"], EvalSettings(), EvalSettings.quick()
    sections = ", ".join(f"{k} {v / 60:.1f} min" for k, v in meta["section_seconds"].items())
    earlier = ""
    if meta["earlier_invocations"]:
        earlier = (f"; with {len(meta['earlier_invocations'])} earlier invocation(s) of the same settings, whose "
                   f"finished samples it reused, {meta['total_seconds'] / 60:.1f} minutes in all")
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
        f"- Question answering: {meta['samples'].get('qa', 'not run')} from `eval.jsonl` (tasks taken in turn, "
        f"seed {s['seed']}, contexts of at most {s['qa_max_context_tokens']} tokens), greedy decoding, at most "
        f"{s['max_new_tokens']} new tokens (the answers are a few words; the paper allowed 256). ROUGE-1/2/L "
        "precision/recall/F1 and SQuAD exact match / F1 against all reference answers.",
        f"- Reconstruction: {meta['samples'].get('reconstruction', 'not run')}: {s['length_samples']} window(s) per "
        f"length bucket {', '.join(map(str, s['length_buckets']))} (lengths drawn from the {s['bucket_width']} tokens "
        f"below each edge) of `pretrain_valid.jsonl`; text randomness: {meta['samples'].get('randomness', 'not run')}:"
        f" {s['randomness_samples']} sequence(s) per kind at {s['randomness_length'] or meta['L']} tokens (normal "
        "text, the same tokens reversed, a random start id then +1 per token, uniform random ids; no special "
        "tokens). Greedy reconstruction of up to the "
        f"length + {s['reconstruction_extra_tokens']} tokens; sentence BLEU-4 (averaged), corpus BLEU-4, token "
        "accuracy (position-wise), and the teacher-forced cross-entropy (nats/token) of the original tokens "
        "plus EOS given the reconstruction prompt (`[vectors][AE]<bos>` in the default prompt style).",
        f"- Benchmark: {meta['samples'].get('bench', bench_note or 'not run')}.",
        "",
        "Sample counts: generation dominates the cost (a few tokens per second on 2 shared CPU cores, and weak "
        "compressors rarely stop before the limit), so the full run's defaults (`EvalSettings`: "
        f"{d.qa_samples} questions, {d.length_samples} windows per bucket, {d.randomness_samples} sequences per "
        f"randomness kind, benchmark batches of at most {d.bench_max_batch_tokens} tokens) keep it under an "
        "hour there; `--quick` (`EvalSettings.quick()`: "
        f"{q.qa_samples} questions of at most {q.max_new_tokens} new tokens, {q.length_samples} window per bucket "
        f"{', '.join(map(str, q.length_buckets))}, {q.randomness_samples} sequence per kind at "
        f"{q.randomness_length} tokens, the benchmark's quick preset) takes a few minutes.",
        "",
        "## Question answering (`qa_summary.csv`)",
        "",
        markdown_table(tables["qa_summary"], ("method", "n", "rouge1_f", "rouge2_f", "rougeL_f", "rougeL_p",
                                              "rougeL_r", "exact_match", "f1", "num_vectors", "total_s", "trained")),
        "Per task (`qa_by_task.csv`):",
        "",
        markdown_table(tables["qa_by_task"], ("dataset", "method", "n", "rouge1_f", "rouge2_f", "rougeL_f",
                                              "exact_match", "f1")),
        "## Reconstruction vs context length (`reconstruction_by_length.csv`)",
        "",
        markdown_table(tables["reconstruction_by_length"], ("method", "length_bucket", "n", "mean_tokens", "bleu",
                                                            "corpus_bleu", "ce", "token_accuracy", "num_vectors",
                                                            "trained")),
        "## Reconstruction vs text randomness (`reconstruction_by_randomness.csv`)",
        "",
        markdown_table(tables["reconstruction_by_randomness"], ("method", "kind", "length", "n", "bleu",
                                                                "corpus_bleu", "ce", "token_accuracy", "trained")),
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
        markdown_table([{**r, "ours/paper": (r["ours"] / r["paper"]) if r["ours"] is not None else None}
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
        "`qa_samples.jsonl` and `reconstruction_samples.jsonl` hold every sample with its scores and timings (seconds); `meta.json` "
        "records the run (`run.json`: settings, sample counts, earlier invocations); the benchmark rows are "
        f"`{meta.get('bench_source') or 'not here'}` (with its CSV twin). `.cache/` (git-ignored) keeps samples "
        "of other settings for reuse.",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    from .cli import _model_args

    _model_args(parser)
    d = EvalSettings()
    parser.add_argument("--out", type=Path, default=None, help="results directory (default: assets/results)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="holds eval.jsonl and pretrain_valid.jsonl (default: the repository's data/)")
    parser.add_argument("--quick", action="store_true", help="a handful of samples, short generations (minutes)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=None, help="default: all")
    parser.add_argument("--qa-samples", type=int, default=None, help=f"questions (default {d.qa_samples})")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help=f"QA generation limit (default {d.max_new_tokens})")
    parser.add_argument("--length-buckets", type=int, nargs="+", default=None,
                        help=f"bucket upper edges in tokens (default {' '.join(map(str, d.length_buckets))})")
    parser.add_argument("--length-samples", type=int, default=None,
                        help=f"windows per bucket (default {d.length_samples})")
    parser.add_argument("--randomness-samples", type=int, default=None,
                        help=f"sequences per randomness kind (default {d.randomness_samples})")
    parser.add_argument("--randomness-length", type=int, default=None, help="tokens (default: the chunk size L)")
    parser.add_argument("--bench-lengths", type=int, nargs="+", default=None,
                        help=f"default {' '.join(map(str, d.bench_lengths))}")
    parser.add_argument("--bench-batch-sizes", type=int, nargs="+", default=None,
                        help=f"default {' '.join(map(str, d.bench_batch_sizes))}")
    parser.add_argument("--bench-repeats", type=int, default=None,
                        help=f"timed runs per step (default {d.bench_repeats})")
    parser.add_argument("--bench-max-batch-tokens", type=int, default=None,
                        help=f"skip bigger batch x length (default {d.bench_max_batch_tokens})")
    parser.add_argument("--bench-from", type=Path, default=None,
                        help="take the benchmark rows from this bench.json (written by `python -m icformer bench`) "
                             "if it exists when the benchmark section starts; otherwise measure")
    parser.add_argument("--seed", type=int, default=None, help="questions and text windows drawn (default 0)")
    parser.add_argument("--icformer-no-pretrain", default="auto",
                        help="IC-Former checkpoint fine-tuned without pre-training (default: "
                             "assets/checkpoints/icformer-no-pretrain when present; 'none' to skip)")
    parser.add_argument("--no-icae", action="store_true",
                        help="without an ICAE checkpoint, skip ICAE instead of adding a seeded random one")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (fewer on a shared CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from .cli import _compressor

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cc = _compressor(args)
    if cc.icae is None and not args.no_icae:
        from .bench import with_icae

        cc = with_icae(cc)
    overrides = {
        name: value for name, value in (
            ("sections", args.sections and tuple(args.sections)), ("qa_samples", args.qa_samples),
            ("max_new_tokens", args.max_new_tokens),
            ("length_buckets", args.length_buckets and tuple(args.length_buckets)),
            ("length_samples", args.length_samples), ("randomness_samples", args.randomness_samples),
            ("randomness_length", args.randomness_length),
            ("bench_lengths", args.bench_lengths and tuple(args.bench_lengths)),
            ("bench_batch_sizes", args.bench_batch_sizes and tuple(args.bench_batch_sizes)),
            ("bench_repeats", args.bench_repeats), ("bench_max_batch_tokens", args.bench_max_batch_tokens),
            ("seed", args.seed),
        ) if value is not None
    }
    if args.quick and any(k.startswith("bench_") and k != "bench_quick" for k in overrides):
        overrides["bench_quick"] = False
    no_pretrain = None if str(args.icformer_no_pretrain).lower() == "none" else args.icformer_no_pretrain
    result = run_evaluation(cc, args.out, quick=args.quick, data_dir=args.data_dir, no_pretrain=no_pretrain,
                            bench_from=args.bench_from, command=default_command(), progress=not args.no_progress,
                            **overrides)
    print(f"wrote {result['out_dir']} ({result['meta']['status']}, {result['meta']['seconds'] / 60:.1f} min)")
    for row in result["tables"]["qa_summary"]:
        print(f"  qa {row['method']:<22} n={row['n']:<4} rougeL_f={_fmt(row['rougeL_f'])} f1={_fmt(row['f1'])}")
    for row in result["tables"]["reconstruction_by_length"]:
        print(f"  reconstruction {row['method']:<10} <= {row['length_bucket']:<4} bleu={_fmt(row['bleu'])} "
              f"ce={_fmt(row['ce'])}")
    return 0
