"""`python -m icformer train`: pre-train or fine-tune IC-Former / ICAE on `accelerate`.

Runs on CPU, one GPU, or many (`accelerate launch`, configs in configs/accelerate/: DDP,
FSDP, DeepSpeed ZeRO-2). The target LLM stays frozen. Every random choice of a sample is a
pure function of (seed, sample index), so `--resume` continues bit-exactly from the last
checkpoint: weights (safetensors), optimizer, scheduler and RNG state, and the step counter.
Accumulation, clipping and gathering sharded weights are left to accelerate, so that the
same loop is right under every backend.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from .objectives import (
    CompressionObjective,
    Example,
    autoencoding_example,
    language_modelling_example,
    question_example,
)
from .defaults import EMBEDDED_K, EMBEDDED_L
from .diagnose import context_use
from .compressors import load_model, new_model
from .prompts import prompt_style
from .timing import bf16_matmul_speedup, machine_description

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs" / "train"
STATE_NAME = "trainer_state.pt"
STAGE_TASKS = {"pretrain": {"AE", "LM"}, "finetune": {"FT"}}
ATTENTION_KERNELS = ("auto", "eager", "sdpa")


@dataclass
class TrainConfig:
    method: str = "icformer"  # icformer | icae
    stage: str = "pretrain"  # pretrain (autoencoding [+ LM for ICAE]) | finetune (QA)
    llm: str | None = None  # None: the embedded default
    data_dir: str = "data"
    out_dir: str = "runs/icformer-pretrain"
    init_from: str | None = None  # checkpoint to start from (fine-tuning starts from pre-training)
    # Another run's checkpoint dir to go on from, as a resume would (weights, window readout, optimizer,
    # schedule, step, sample order, log), with this run's options: a stage that changes the objective.
    continue_from: str | None = None
    num_digest_tokens: int = EMBEDDED_K
    chunk_size: int = EMBEDDED_L
    context_tokens: int | None = None  # tokens per autoencoding window (default: chunk_size)
    # With context_tokens above chunk_size: the share of pre-training samples that read one chunk_size
    # window instead, a mix of lengths, so one-chunk prompts keep being trained beside the long ones.
    short_window_ratio: float = 0.0
    lm_ratio: float = 0.4  # ICAE pre-training: share of language-modelling samples
    kl_weight: float = 0.0  # fine-tuning: KL to the full-context teacher
    # Fine-tuning: the share of micro-batches that autoencode a window (context_tokens, default chunk_size) of
    # their questions' contexts instead, so fine-tuning keeps the reconstruction pre-training taught. Whole
    # micro-batches: the loss is a mean over target tokens, and a window has far more of them than an answer.
    ae_ratio: float = 0.0
    max_answer_tokens: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine (after warm-up)
    # Constant schedule only: the last decay_steps steps before max_steps take the rate linearly to zero
    # (warm-up, stable, decay). Decay in a branch (`continue_from` a constant-rate checkpoint), so the
    # constant-rate run itself can still be extended.
    decay_steps: int = 0
    batch_size: int = 1
    grad_accum: int = 16
    clip: float = 2.0
    max_steps: int = 9300
    eval_every: int = 100
    eval_samples: int = 16
    save_every: int = 100
    seed: int = 0
    mixed_precision: str = "auto"  # auto: bf16 on a GPU or a CPU with fast bf16 matmuls (AMX), else fp32
    output_norm_init: float = 1.0  # named deviation from the paper (docs/learning.md); 1.0 = paper
    digest_init_std: float = 0.0
    local_window_layers: int = 0  # IC-Former locality prior (docs/learning.md); 0 = paper
    readout_weight: float = 0.0  # IC-Former window-readout auxiliary loss (objectives.py); 0 = paper
    llm_weight: float = 1.0  # weight of the LLM's own loss; 0 = a readout-only warm-up stage; 1 = paper
    # Weight of the distance of the LLM's hidden states reading the vectors to its reading the raw context
    # (objectives.py); 0 = paper.
    hidden_weight: float = 0.0
    lora_r: int = 128
    gradient_checkpointing: bool = False  # recompute the frozen LLM's activations in backward (IC-Former only)
    # The frozen LLM's attention kernel while training: auto = eager on a CPU, where SDPA's backward is the
    # slow part of a step (docs/machine.md §5), the model's own elsewhere. The same arithmetic either way.
    llm_attention: str = "auto"  # auto | eager | sdpa
    # Wall-clock seconds this invocation may train (from its first step): at the deadline it saves and
    # ends as finished, as at max_steps, so a lease's stage never overruns. None: no deadline.
    time_budget_s: float | None = None
    # With time_budget_s: its last decay_s seconds take the rate linearly to zero, the decay of a run whose
    # number of steps is not known in advance (a GPU lease's stages).
    decay_s: float = 0.0

    @classmethod
    def from_sources(cls, preset: str | None = None, config_file: str | None = None, **overrides: Any):
        """Preset YAML, then a user YAML, then flags: later wins."""
        values: dict[str, Any] = {}
        for path in filter(None, [PRESETS_DIR / f"{preset}.yaml" if preset else None, config_file]):
            path = Path(path)
            if not path.is_file():
                known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
                raise FileNotFoundError(f"no training config {path} (presets: {known})")
            values.update(yaml.safe_load(path.read_text()) or {})
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}")
        config = cls(**values)
        icformer_only = dict(local_window_layers=0, readout_weight=0.0, llm_weight=1.0, hidden_weight=0.0)
        changed = sorted(k for k, v in icformer_only.items() if getattr(config, k) != v)
        if config.method != "icformer" and changed:
            raise ValueError(f"{changed} are IC-Former options; ICAE trains with the defaults {icformer_only}")
        if config.decay_steps and (config.schedule != "constant"
                                   or not 0 < config.decay_steps <= config.max_steps - config.warmup_steps):
            raise ValueError(f"decay_steps {config.decay_steps} needs the constant schedule and at most "
                             f"max_steps - warmup_steps = {config.max_steps - config.warmup_steps} steps")
        if config.decay_s and not (config.time_budget_s and 0 < config.decay_s <= config.time_budget_s
                                   and config.schedule == "constant" and not config.decay_steps):
            raise ValueError(f"decay_s {config.decay_s} needs time_budget_s of at least as many seconds, the constant "
                             "schedule and no decay_steps")
        if config.short_window_ratio and not (0 < config.short_window_ratio < 1 and config.stage == "pretrain"
                                              and (config.context_tokens or 0) > config.chunk_size):
            raise ValueError(f"short_window_ratio {config.short_window_ratio} must lie in (0, 1), in pre-training "
                             f"with context_tokens above chunk_size {config.chunk_size}")
        if config.ae_ratio and not (0 < config.ae_ratio < 1 and config.stage == "finetune" and not config.kl_weight):
            raise ValueError(f"ae_ratio {config.ae_ratio} must lie in (0, 1), in fine-tuning without kl_weight")
        if config.eval_samples == 1:
            raise ValueError("eval_samples must be 0 (no evaluation) or at least 2: the swap gap swaps one "
                             "sample's vectors into another's")
        if config.llm_attention not in ATTENTION_KERNELS:
            raise ValueError(f"llm_attention must be one of {ATTENTION_KERNELS}, got {config.llm_attention!r}")
        if config.method not in ("icformer", "icae") or config.stage not in ("pretrain", "finetune"):
            raise ValueError(f"method must be icformer|icae and stage pretrain|finetune, got {config.method}/{config.stage}")
        return config


# --------------------------------------------------------------------------- data


class SampleStream:
    """Deterministic examples: sample i is drawn from (seed, i) alone, on every process.

    `style`: the compressor's prompt style (prompts.py), so a checkpoint keeps its layouts.
    """

    def __init__(self, rows: list[dict], tokenizer, config: TrainConfig, style: str = "default") -> None:
        if not rows:
            raise ValueError("no training rows")
        self.rows, self.tokenizer, self.config, self.style = rows, tokenizer, config, style
        self._ids: dict[int, list[int]] = {}

    def _tokens(self, index: int, text: str) -> list[int]:
        if index not in self._ids:
            self._ids[index] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._ids[index]

    def example(self, i: int) -> Example:
        cfg = self.config
        rng = random.Random(cfg.seed * 1_000_003 + i)
        epoch, offset = divmod(i, len(self.rows))
        order = list(range(len(self.rows)))
        random.Random(cfg.seed + epoch).shuffle(order)
        index = order[offset]
        row = self.rows[index]
        if cfg.stage == "finetune":
            context = self._tokens(index, row["input"])
            context = context[: cfg.chunk_size * 8]  # keep the compressed prompt bounded
            if cfg.ae_ratio and random.Random(f"{cfg.seed}:ae:{i // cfg.batch_size}").random() < cfg.ae_ratio:
                window = cfg.context_tokens or cfg.chunk_size
                start = rng.randrange(max(len(context) - window, 0) + 1)
                return autoencoding_example(self.tokenizer, context[start : start + window], self.style)
            answer = self.tokenizer(row["answer"], add_special_tokens=False)["input_ids"][: cfg.max_answer_tokens]
            return question_example(self.tokenizer, context, row["prompt"], answer, self.style)
        ids = self._tokens(index, row["text"])
        window = cfg.context_tokens or cfg.chunk_size
        if cfg.short_window_ratio and rng.random() < cfg.short_window_ratio:
            window = cfg.chunk_size
        use_lm = cfg.method == "icae" and rng.random() < cfg.lm_ratio and len(ids) > window + 1
        span = window + (window // 2 if use_lm else 0)
        start = rng.randrange(max(len(ids) - span, 0) + 1)
        context = ids[start : start + window] or ids[:1]
        if use_lm:
            return language_modelling_example(self.tokenizer, context, ids[start + window : start + span])
        return autoencoding_example(self.tokenizer, context, self.style)

    def batch(self, first: int, size: int) -> list[Example]:
        return [self.example(first + j) for j in range(size)]


def load_rows(config: TrainConfig, split: str) -> list[dict]:
    from .files import read_jsonl

    name = {"pretrain": "pretrain_{}.jsonl", "finetune": "instruct_{}.jsonl"}[config.stage]
    split_name = {"pretrain": {"train": "train", "valid": "valid"}, "finetune": {"train": "train", "valid": "test"}}
    path = Path(config.data_dir) / name.format(split_name[config.stage][split])
    if not path.is_file():
        raise FileNotFoundError(f"no training data at {path}: run `python -m icformer prepare-data --out {config.data_dir}`")
    return read_jsonl(path)


# --------------------------------------------------------------------------- model


def build_model(config: TrainConfig, target):
    """A fresh float32 compressor sized for the LLM, or one loaded from `init_from` / `continue_from`."""
    torch.manual_seed(config.seed)  # what follows draws from it too (the readout's init)
    source = config.init_from or (str(Path(config.continue_from) / "model") if config.continue_from else None)
    if source:  # the model's shape and options are the checkpoint's own
        return load_model(source, target, config.method, dtype=torch.float32)
    options = (dict(output_norm_init=config.output_norm_init, digest_init_std=config.digest_init_std,
                    local_window_layers=config.local_window_layers)
               if config.method == "icformer" else dict(lora_r=config.lora_r))
    return new_model(config.method, target, seed=config.seed, num_digest_tokens=config.num_digest_tokens,
                     chunk_size=config.chunk_size, dtype=torch.float32, **options)


def trainable_parameters(compressor) -> list[torch.nn.Parameter]:
    own = getattr(compressor, "trainable_parameters", None)
    params = list(own()) if own else list(compressor.parameters())
    return [p for p in params if p.requires_grad]


def make_scheduler(optimizer, config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "cosine":
            progress = (step - config.warmup_steps) / max(config.max_steps - config.warmup_steps, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if config.decay_steps:
            return min(1.0, max(config.max_steps - step, 0) / config.decay_steps)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def time_decay(config: TrainConfig, elapsed_s: float) -> float:
    """The factor decay_s puts on the scheduled rate `elapsed_s` seconds into a time-budgeted run."""
    if not config.decay_s:
        return 1.0
    return min(1.0, max(config.time_budget_s - elapsed_s, 0.0) / config.decay_s)


# --------------------------------------------------------------------------- checkpoints


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted(out_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def save_checkpoint(accelerator, out_dir: Path, step: int, objective, optimizer, scheduler,
                    config: TrainConfig, record: dict, keep: int = 2, finished: bool | None = None) -> Path | None:
    """Gather on every rank (collective under FSDP), write on the main one.

    Weights go to safetensors in the compressor's own format; optimizer/scheduler/RNG state
    with torch.save (read back weights_only). `finished` (default: max_steps reached) marks the
    weights trained.
    """
    weights = compressor_state_dict(accelerator, objective)
    optimizer_state = full_optimizer_state(accelerator, objective, optimizer)
    if not accelerator.is_main_process:
        return None
    path = out_dir / f"checkpoint-{step}"
    tmp = out_dir / f".tmp-checkpoint-{step}"
    compressor = accelerator.unwrap_model(objective).compressor
    compressor.save_pretrained(tmp / "model", state_dict=weights, trained=step >= config.max_steps if finished is None else finished, **record)
    torch.save(
        {"step": step, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
         "torch_rng": torch.get_rng_state(), "config": asdict(config),
         "objective_extras": objective_extras(accelerator.unwrap_model(objective))},
        tmp / STATE_NAME,
    )
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    for old in sorted(out_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
        shutil.rmtree(old)
    return path


def compressor_state_dict(accelerator, objective) -> dict[str, torch.Tensor]:
    """The compressor's full weights, however accelerate wrapped or sharded the objective.

    Under FSDP this gathers the whole objective (frozen LLM included) to the main process's
    CPU, the price of asking accelerate rather than reaching into shards; other ranks get {}.
    """
    prefix = "compressor."
    full = accelerator.get_state_dict(objective)
    return {name[len(prefix):]: tensor for name, tensor in full.items() if name.startswith(prefix)}


def full_optimizer_state(accelerator, objective, optimizer) -> dict | None:
    """The optimizer state as one plain dict of tensors, gathered where FSDP shards it.

    None under DeepSpeed: ZeRO partitions the state per rank in its own format, so resuming
    there is refused (see `restore_trainer_state`).
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return None
    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(objective, optimizer.optimizer, options=options)
    return optimizer.state_dict()


def objective_extras(objective) -> dict[str, torch.Tensor]:
    """Trained weights of the objective outside the compressor (the window readout), for resuming."""
    readout = getattr(objective, "readout", None)
    return {} if readout is None else {f"readout.{k}": v.detach().cpu() for k, v in readout.state_dict().items()}


def load_objective_extras(path: Path, objective) -> None:
    """The window readout saved beside a checkpoint's weights, when both sides have one."""
    readout = getattr(objective, "readout", None)
    if readout is None or not (path / STATE_NAME).is_file():
        return
    state = torch.load(path / STATE_NAME, weights_only=True, mmap=True).get("objective_extras") or {}
    if state:
        readout.load_state_dict({k[len("readout."):]: v for k, v in state.items()})


def load_weights(path: Path, compressor) -> None:
    """Checkpoint weights into the plain compressor, before accelerate wraps or shards it."""
    from safetensors.torch import load_file

    compressor.load_state_dict(load_file(str(path / "model" / "model.safetensors")))


def restore_trainer_state(path: Path, accelerator, objective, optimizer, scheduler) -> int:
    """Optimizer, scheduler and RNG state after `prepare` (FSDP re-shards the optimizer state
    onto its own parameters); returns the step to continue from."""
    from accelerate.utils import DistributedType

    state = torch.load(path / STATE_NAME, weights_only=True, mmap=True)
    if state["optimizer"] is None or accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise NotImplementedError(
            f"{path} cannot be resumed here: DeepSpeed partitions the optimizer state per rank and this "
            "trainer does not save it; start a new run from the weights with --init-from "
            f"{path / 'model'}, or resume under DDP/FSDP from a checkpoint written there"
        )
    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(objective, optimizer.optimizer, state["optimizer"], options=options)
    else:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def configure_deepspeed(plugin, config: TrainConfig) -> None:
    """Fill what DeepSpeed would otherwise infer from a DataLoader, which this loop has none of.

    `--clip` and `--grad-accum` win over the accelerate config, so that every backend trains
    the same schedule.
    """
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
    plugin.deepspeed_config["gradient_accumulation_steps"] = config.grad_accum
    plugin.deepspeed_config["gradient_clipping"] = config.clip


# --------------------------------------------------------------------------- loop


class _StopFlag:
    """SIGINT/SIGTERM finish the current step, write a checkpoint, then stop."""

    def __init__(self) -> None:
        self.raised = False
        self._old = {s: signal.signal(s, self._set) for s in (signal.SIGINT, signal.SIGTERM)}

    def _set(self, *_: Any) -> None:
        self.raised = True

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@dataclass
class _Run:
    """Everything a training job holds between steps."""

    accelerator: Any
    target: Any
    compressor: Any
    objective: Any
    optimizer: Any
    scheduler: Any
    step: int
    train_stream: SampleStream
    valid_stream: SampleStream | None
    log_path: Path


def resolve_precision(setting: str) -> str:
    """accelerate's mixed_precision for `setting`. "auto" takes what an `accelerate launch` config
    names; without one, bf16 where it pays: on a GPU, and on a CPU whose bf16 matmuls run at least
    twice as fast as fp32 (AMX; training steps then take about 0.6x as long, docs/machine.md §5),
    fp32 ("no") elsewhere."""
    if setting != "auto":
        return setting
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):  # set by `accelerate launch` from its config
        return os.environ["ACCELERATE_MIXED_PRECISION"]
    return "bf16" if torch.cuda.is_available() or bf16_matmul_speedup() >= 2.0 else "no"


def _accelerator(config: TrainConfig):
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    precision = resolve_precision(config.mixed_precision)
    # accelerate keeps one precision per process; a later run in the same process (tests, a notebook)
    # may choose another. The distributed state (process group) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    # ICAE mixes AE and LM samples, so a micro-batch may leave the [LM] vector unused.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=config.method == "icae")
    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available(),
                              gradient_accumulation_steps=config.grad_accum, kwargs_handlers=[ddp])
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        configure_deepspeed(accelerator.state.deepspeed_plugin, config)
    return accelerator


def _check(config: TrainConfig) -> None:
    if config.gradient_checkpointing and config.method != "icformer":
        raise ValueError("gradient_checkpointing is for IC-Former: ICAE's adapter is off when backward recomputes")
    if config.continue_from:
        if not (Path(config.continue_from) / STATE_NAME).is_file():
            raise FileNotFoundError(f"continue_from {config.continue_from} is not a training checkpoint (no {STATE_NAME})")
        if config.init_from:
            raise ValueError("pass init_from or continue_from, not both")


def _check_same_start(out_dir: Path, config: TrainConfig) -> None:
    """A resumed run's weights came from where it first started, so a different start can't be recorded."""
    path = out_dir / "config.yaml"
    saved = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    for key in ("init_from", "continue_from"):
        if key in saved and saved[key] != getattr(config, key):
            raise ValueError(f"{out_dir} started from {key} {saved[key]!r}, not {getattr(config, key)!r}: resume "
                             "it with its own start, or train the new start into another --out")


def _prepare(config: TrainConfig, resume: bool, target) -> _Run:
    """Models, optimizer and data, restored from the latest checkpoint (or `continue_from`) when there is one."""
    from .llm import load_llm

    _check(config)
    accelerator = _accelerator(config)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume and latest_checkpoint(out_dir) is not None:
        _check_same_start(out_dir, config)
    # Under bf16 autocast the frozen LLM is stored in bf16 (no per-step casts); the trained weights stay float32.
    llm_dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
    target = target or load_llm(config.llm, device=str(accelerator.device), dtype=llm_dtype)
    compressor = build_model(config, target).to(accelerator.device)
    compressor.train()
    for name, vector in compressor.task_embeddings.items():  # the paper freezes [AE] when fine-tuning
        vector.requires_grad_(name in STAGE_TASKS[config.stage])
    objective = CompressionObjective(compressor, target, kl_weight=config.kl_weight,
                                     readout_weight=config.readout_weight, llm_weight=config.llm_weight,
                                     hidden_weight=config.hidden_weight)
    extra = list(objective.readout.parameters()) if config.readout_weight > 0 else []
    optimizer = torch.optim.AdamW(trainable_parameters(compressor) + extra, lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config)

    step = 0
    checkpoint = latest_checkpoint(out_dir) if resume else None
    log_path = out_dir / "metrics.jsonl"
    if checkpoint is None and config.continue_from:
        checkpoint = Path(config.continue_from)
        shutil.copy(checkpoint.parent / "metrics.jsonl", log_path)  # the history goes on; truncated below
    if checkpoint is not None:
        load_weights(checkpoint, compressor)
        load_objective_extras(checkpoint, objective)
    elif config.init_from:  # a stage that starts from another keeps that stage's window readout
        load_objective_extras(Path(config.init_from).parent, objective)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    if accelerator.gradient_accumulation_steps != config.grad_accum:  # e.g. set in an accelerate config
        raise ValueError(f"accelerate accumulates {accelerator.gradient_accumulation_steps} micro-batches per "
                         f"step but --grad-accum is {config.grad_accum}; set it in one place")
    if checkpoint is not None:
        step = restore_trainer_state(checkpoint, accelerator, objective, optimizer, scheduler)

    style = prompt_style(compressor)
    train_stream = SampleStream(load_rows(config, "train"), target.tokenizer, config, style)
    valid_rows = load_rows(config, "valid")[: config.eval_samples]
    if len(valid_rows) == 1:
        raise ValueError(f"{config.data_dir} has one validation row; the swap gap needs at least 2 (or eval_samples 0)")
    valid_config = replace(config, ae_ratio=0.0)  # fine-tuning is judged on its questions alone
    valid_stream = SampleStream(valid_rows, target.tokenizer, valid_config, style) if valid_rows else None
    _truncate_log(log_path, step)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))
    return _Run(accelerator, target, compressor, objective, optimizer, scheduler, step, train_stream, valid_stream,
                log_path)


def _optimizer_step(run: _Run, config: TrainConfig) -> dict[str, Any]:
    """One optimizer step over grad_accum micro-batches; the metrics row (without timing)."""
    accelerator, objective = run.accelerator, run.objective
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = config.batch_size * config.grad_accum * world
    tokens, losses, parts = 0, [], {}
    for micro in range(config.grad_accum):
        first = run.step * per_step + (micro * world + rank) * config.batch_size
        examples = run.train_stream.batch(first, config.batch_size)
        # Gradients sync (DDP/FSDP) or DeepSpeed steps on the last micro-batch only;
        # backward divides the loss by the number of micro-batches.
        with accelerator.accumulate(objective):
            loss, _ = objective(examples)
            accelerator.backward(loss)
        losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
        for name, value in accelerator.unwrap_model(objective).parts.items():  # terms of a mixed loss
            parts[name] = parts.get(name, 0.0) + value.item() / config.grad_accum
        tokens += sum(len(e.context_ids) + len(e.target_ids) for e in examples)
    # The whole objective: frozen weights have no gradient, and FSDP clips across shards
    # only when given its own module's parameters. DeepSpeed clips by itself; accelerate
    # just reports its norm there, which may be None.
    grad_norm = accelerator.clip_grad_norm_(objective.parameters(), config.clip)
    lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return {"step": run.step, "loss": sum(losses) / len(losses), "lr": lr,
            "grad_norm": None if grad_norm is None else float(grad_norm), "samples_seen": run.step * per_step,
            "tokens": tokens * world, **parts}


def train(config: TrainConfig, *, resume: bool = False, stop_after: int | None = None, target=None) -> dict:
    """Run (or continue) a training job; returns the last metrics row.

    `stop_after` ends the run early at that step with a checkpoint, as an interruption would.
    """
    from tqdm.auto import tqdm

    run = _prepare(config, resume, target)
    accelerator = run.accelerator
    stop, stopping, row, started = _StopFlag(), False, {}, time.perf_counter()
    if run.step == 0 and run.valid_stream is not None:  # the curve's first point: where init_from (or random) starts
        _log(run, {"step": 0, "samples_seen": 0, **_held_out(run)})
    bar = tqdm(total=config.max_steps, initial=run.step, disable=not accelerator.is_main_process, desc="train")
    undo_checkpointing = checkpoint_llm(run.target.model) if config.gradient_checkpointing else (lambda: None)
    undo_attention = use_attention(run.target.model, resolve_attention(config.llm_attention, accelerator.device))
    try:
        while run.step < config.max_steps and not stopping:
            tick = time.perf_counter()
            if config.decay_s:  # on top of the step schedule, which knows nothing of the clock
                scale = time_decay(config, tick - started)
                for group, scheduled in zip(run.optimizer.param_groups, run.scheduler.get_last_lr()):
                    group["lr"] = scheduled * scale
            row = _optimizer_step(run, config)
            step = run.step
            budget_spent = config.time_budget_s is not None and time.perf_counter() - started >= config.time_budget_s
            if stop.raised or budget_spent:
                accelerator.set_trigger()
            stopping = accelerator.check_trigger()  # every rank stops (and saves) at the same step
            seconds = time.perf_counter() - tick
            row = {**row, "tokens_per_s": row.pop("tokens") / seconds, "step_s": seconds,
                   "elapsed_s": time.perf_counter() - started}
            # A budgeted run is scored where it ends too, so that a lease's short runs log a held-out loss; the
            # flag is config, the same on every rank (the scoring runs the objective's collectives).
            last = step == config.max_steps or (stopping and config.time_budget_s is not None)
            if run.valid_stream is not None and (step % config.eval_every == 0 or last):
                row.update(_held_out(run))
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
            _log(run, row)
            done = step == config.max_steps or stopping or step == stop_after
            if step % config.save_every == 0 or done:
                save_checkpoint(accelerator, Path(config.out_dir), step, run.objective, run.optimizer, run.scheduler,
                                config, _record(row, config, accelerator),
                                finished=step >= config.max_steps or budget_spent)
            if step == stop_after:
                break
        accelerator.wait_for_everyone()
    finally:
        stop.restore()
        bar.close()
        undo_checkpointing()
        undo_attention()
    return row


def _held_out(run: _Run) -> dict[str, float]:
    """The valid_* columns: every held-out example with its own vectors and with another's."""
    examples = [run.valid_stream.example(i) for i in range(len(run.valid_stream.rows))]
    return context_use(run.objective, examples).as_row()


def _log(run: _Run, row: dict[str, Any]) -> None:
    """One metrics.jsonl row. Rows of optimizer steps carry step_s; the step-0 row has only the held-out scores."""
    if run.accelerator.is_main_process:
        with run.log_path.open("a") as log:
            log.write(json.dumps(row) + "\n")


def resolve_attention(setting: str, device: torch.device) -> str | None:
    """The attention kernel `setting` asks for on `device`; None keeps the model's own."""
    if setting == "auto":
        return "eager" if device.type == "cpu" else None
    return setting


def use_attention(model, kernel: str | None):
    """Switch the frozen LLM's attention kernel for training; returns the undo (a caller's model is left as given)."""
    before = model.config._attn_implementation
    if kernel is None or kernel == before:
        return lambda: None
    model.set_attn_implementation(kernel)
    return lambda: model.set_attn_implementation(before)


def checkpoint_llm(model):
    """Keep only the frozen LLM's layer inputs and recompute the rest during backward.

    transformers checkpoints a layer only in train mode, so the LLM is put in train() (Llama and
    Mistral have no dropout). Non-reentrant checkpointing carries gradients through the frozen
    layers to the compressor even where inputs_embeds needs no grad itself. Returns the undo.
    """
    was_training = model.training
    enable = getattr(model, "activation_checkpointing_enable", None)  # gradient_checkpointing_enable, renamed
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()

    def undo() -> None:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
        model.train(was_training)

    return undo


def _record(row: dict, config: TrainConfig, accelerator) -> dict:
    """What a checkpoint says of its own making (the model card reads it)."""
    return {"stage": config.stage, "steps": row.get("step"), "samples_seen": row.get("samples_seen"),
            "loss": row.get("loss"), "elapsed_s": row.get("elapsed_s"),
            "machine": machine_description(accelerator.device), "precision": accelerator.mixed_precision,
            "torch": torch.__version__}


def logged_steps(run_dir: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl rows of optimizer steps (they carry step_s), without the step-0 scores."""
    log = Path(run_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    return [r for r in rows if "step_s" in r]


def _truncate_log(path: Path, step: int) -> None:
    """On resume, drop log rows written after the checkpoint we continue from."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))


# --------------------------------------------------------------------------- CLI
