"""Quick gates that say whether a compressor is learning to carry its context (docs/learning.md).

A compressor can lower its training loss for a long time by learning only a generic soft prompt
(the LLM's prior over the corpus) while its vectors say nothing about their own context. Three
gates tell the two apart in minutes instead of a training run:

* memorise: steps of AdamW until one window is read back below a loss threshold, for IC-Former
  and for free prompt vectors (the same LLM, window and budget): can this parametrisation be
  taught at all, and how much slower than the LLM's own limit is it?
* uses the context: held-out loss with each sample's own vectors against the loss with another
  sample's vectors swapped in. The gap is what the vectors carry; about zero means nothing.
* locality: the paper's attention analysis (attention.py), per layer.

`context_use` is also what training logs at every evaluation (train.py), so a run shows early
whether its gap is opening. `python -m icformer diagnose` prints the three as tables.
"""

from __future__ import annotations

import types
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .compressors.base import CompressorModel
from .defaults import CHECKPOINTS_DIR
from .objectives import CompressionObjective, Example, autoencoding_example


@dataclass
class ContextUse:
    """Held-out scores with each sample's own vectors and with another sample's."""

    own_loss: float
    swapped_loss: float
    own_accuracy: float  # teacher-forced next-token accuracy on the targets
    swapped_accuracy: float
    samples: int

    @property
    def gap(self) -> float:
        """Nats per target token that the vectors' own context is worth; about 0 = no information."""
        return self.swapped_loss - self.own_loss

    def as_row(self, prefix: str = "valid_") -> dict[str, float]:
        return {f"{prefix}loss": self.own_loss, f"{prefix}swapped_loss": self.swapped_loss,
                f"{prefix}swap_gap": self.gap, f"{prefix}token_acc": self.own_accuracy,
                f"{prefix}swapped_token_acc": self.swapped_accuracy}


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """No grad, eval mode, and every submodule's mode put back after (`train()` would also switch
    the frozen LLM into training mode)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


def context_use(objective: nn.Module, examples: list[Example]) -> ContextUse:
    """Score consecutive pairs of examples with their own vectors and with each other's.

    `objective` is a CompressionObjective, possibly wrapped (DDP, FSDP): everything goes through its
    forward. With extra terms in the objective (the window readout) only the LLM's loss is counted.
    An odd last example pairs with the first.
    """
    if len(examples) < 2:
        raise ValueError("context_use needs at least 2 examples: one to swap in for another")
    inner = getattr(objective, "module", objective)
    pairs = [[examples[i], examples[(i + 1) % len(examples)]] for i in range(0, len(examples), 2)]
    scores: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with evaluating(objective):
        for pair in pairs:
            for swap in (False, True):
                loss, _ = objective(pair, swap=swap)
                parts = inner.parts
                llm_loss = parts["llm_loss"] if "llm_loss" in parts else loss
                scores[swap].append((float(llm_loss), float(parts["token_accuracy"])))
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    own, swapped = scores[False], scores[True]
    return ContextUse(mean([l for l, _ in own]), mean([l for l, _ in swapped]),
                      mean([a for _, a in own]), mean([a for _, a in swapped]), len(examples))


# --------------------------------------------------------------------------- memorise


class FreeVectors(CompressorModel):
    """k prompt vectors optimised directly for one window: the LLM's own reading limit."""

    method = "free"

    def __init__(self, k: int, hidden_size: int, scale: float, task_names: tuple[str, ...] = ("AE",)) -> None:
        super().__init__(types.SimpleNamespace(prompt_style="default"))
        self.vectors = nn.Parameter(torch.randn(k, hidden_size) * scale)
        self.task_embeddings = nn.ParameterDict({t: nn.Parameter(torch.zeros(hidden_size)) for t in task_names})

    def encode(self, ids: list[list[int]], embed) -> list[torch.Tensor]:
        return [self.vectors for _ in ids]


@dataclass
class MemoriseResult:
    method: str
    steps_to_threshold: int | None  # None: not reached within the budget
    final_loss: float
    first_loss: float
    seconds: float


def memorise(compressor: nn.Module, target, window_ids: list[int], *, steps: int, lr: float,
             threshold: float = 1.0) -> MemoriseResult:
    """AdamW on one autoencoding example until its loss falls below `threshold` (or `steps` run out)."""
    objective = CompressionObjective(compressor, target)
    example = autoencoding_example(target.tokenizer, window_ids, compressor.config.prompt_style)
    params = [p for p in compressor.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    compressor.train()
    first, reached, loss_value, started = None, None, float("nan"), time.perf_counter()
    for step in range(1, steps + 1):
        loss, _ = objective([example])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()  # the loss before this step's update
        first = loss_value if first is None else first
        if loss_value < threshold:
            reached = step - 1
            break
    return MemoriseResult(compressor.method, reached, loss_value, first, time.perf_counter() - started)


# --------------------------------------------------------------------------- CLI


def held_out_windows(target, data_dir: str, n: int, length: int) -> list[list[int]]:
    """The first `length` tokens of the first `n` held-out texts long enough to fill a window."""
    from .files import read_jsonl

    path = Path(data_dir) / "pretrain_valid.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no held-out data at {path}: run `python -m icformer prepare-data --out {data_dir}`")
    windows = []
    for row in read_jsonl(path):
        ids = target.tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            windows.append(ids[:length])
        if len(windows) == n:
            break
    if len(windows) < 2:
        raise ValueError(f"{path} has fewer than 2 texts of {length} tokens")
    return windows


def run_gates(target, icformer, windows: list[list[int]], args: Any) -> dict[str, Any]:
    """Every requested gate on `windows`; the memorise gate trains copies, never `icformer` itself."""
    import copy

    from .attention import analyse_ids

    results: dict[str, Any] = {}
    if "context" in args.gates:
        objective = CompressionObjective(icformer, target)
        examples = [autoencoding_example(target.tokenizer, w, icformer.config.prompt_style) for w in windows]
        use = context_use(objective, examples)
        results["context"] = {**asdict(use), "gap": use.gap}
    if "locality" in args.gates:
        results["locality"] = [asdict(s) for s in analyse_ids(target, icformer, windows)]
    if "memorise" in args.gates:
        torch.manual_seed(0)
        model = copy.deepcopy(icformer).requires_grad_(True)
        free = FreeVectors(icformer.config.k, icformer.config.hidden_size,
                           scale=float(target.model.get_input_embeddings().weight.float().pow(2).mean().sqrt()))
        results["memorise"] = [
            asdict(memorise(model, target, windows[0], steps=args.steps, lr=args.lr, threshold=args.threshold)),
            asdict(memorise(free, target, windows[0], steps=args.steps, lr=args.free_lr, threshold=args.threshold)),
        ]
    return results


def format_results(results: dict[str, Any]) -> str:
    lines = []
    if "memorise" in results:
        lines += ["memorise one window (loss before the step, nats/token)",
                  "| method | first loss | final loss | steps to threshold | seconds |", "|---|---|---|---|---|"]
        for r in results["memorise"]:
            steps = "not reached" if r["steps_to_threshold"] is None else r["steps_to_threshold"]
            lines.append(f"| {r['method']} | {r['first_loss']:.2f} | {r['final_loss']:.2f} | {steps} | {r['seconds']:.0f} |")
        lines.append("")
    if "context" in results:
        c = results["context"]
        lines += [f"uses the context ({c['samples']} held-out windows)",
                  "| vectors | loss | token accuracy |", "|---|---|---|",
                  f"| own | {c['own_loss']:.3f} | {c['own_accuracy']:.3f} |",
                  f"| swapped from another window | {c['swapped_loss']:.3f} | {c['swapped_accuracy']:.3f} |",
                  f"swap gap: {c['gap']:+.3f} nats/token (0 would mean the vectors carry nothing of their window)", ""]
    if "locality" in results:
        lines += ["locality (paper §4: a band has order near 1 and window mass well above uniform)",
                  "| layer | order correlation | in order | window mass | uniform | context mass |",
                  "|---|---|---|---|---|---|"]
        for i, s in enumerate(results["locality"]):
            lines.append(f"| {i} | {s['order_correlation']:.2f} | {s['in_order']:.2f} | {s['window_mass']:.3f} | "
                         f"{s['uniform_window_mass']:.3f} | {s['context_mass']:.2f} |")
    return "\n".join(lines)


def logged_gates(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """Every evaluation row the runs logged (metrics.jsonl): samples seen, own and swapped loss, gap."""
    rows = []
    for run_dir in run_dirs:
        log = run_dir / "metrics.jsonl"
        if not log.is_file():
            raise FileNotFoundError(f"{run_dir} has no metrics.jsonl: not a training run")
        for line in log.read_text().splitlines():
            row = json.loads(line)
            if "valid_swap_gap" in row:
                rows.append(dict(run=run_dir.name, step=row["step"], samples_seen=row["samples_seen"],
                                 own_loss=row["valid_loss"], swapped_loss=row["valid_swapped_loss"],
                                 gap=row["valid_swap_gap"], token_accuracy=row["valid_token_acc"]))
    return rows


def format_logged(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | step | samples seen | held-out loss, own | swapped | swap gap | token accuracy |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['step']} | {r['samples_seen']:,} | {r['own_loss']:.3f} | {r['swapped_loss']:.3f} | "
              f"{r['gap']:+.3f} | {r['token_accuracy']:.3f} |" for r in rows]
    return "\n".join(lines)
