"""Where IC-Former's digests look: the paper's attention analysis, as numbers.

The paper (docs/paper.md §4.8) finds that after pre-training each last-layer digest attends to
3-5 consecutive context tokens, in order: a diagonal band. A model without pre-training
shows none. That band is the sign that the digests divide the context among themselves,
so it is worth checking on any checkpoint, and it shows early in training whether a run
is heading there.

`python -m icformer attention` compares checkpoints (by default the committed IC-Former
with and without pre-training) over the first chunk of each example context.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .defaults import ASSETS_DIR, CHECKPOINTS_DIR
from .compressors.modeling_icformer import ICFormerModel
from .prompts import context_prefix_ids, prompt_style

if TYPE_CHECKING:
    from .compressor import ContextCompressor

BAND_WINDOW = 5  # consecutive context tokens: the paper's band is 3-5 tokens wide


@dataclass
class BandStatistics:
    """How much one layer's digest attention looks like the paper's diagonal band.

    order_correlation: Spearman correlation between a digest's index and the mean context
      position it attends to (1: digests read the context in order; about 0: no order).
    in_order: fraction of consecutive digests whose mean position moves forward.
    window_mass: attention on the best `window` consecutive context tokens, over all the
      attention on context tokens (a band: near 1; uniform attention: window / n).
    uniform_window_mass: what window_mass would be for uniform attention, for scale.
    context_mass: attention on context tokens rather than on the digests themselves.

    Read order_correlation together with window_mass: near-uniform attention still has
    slightly ordered mean positions (RoPE's mild recency bias), so order without mass
    concentrated in a window is not a band.
    """

    order_correlation: float
    in_order: float
    window_mass: float
    uniform_window_mass: float
    context_mass: float


def digest_attention(model: ICFormerModel, context_embeds: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention of every layer's digests over one chunk: [layers, k, n + k].

    `context_embeds` [n, h] with n <= L: the analysis is of one chunk, as in the paper.
    """
    if context_embeds.shape[0] > model.config.chunk_size:
        raise ValueError(f"{context_embeds.shape[0]} tokens is more than one chunk (L={model.config.chunk_size})")
    with torch.no_grad():
        _, attentions = model(context_embeds[None].to(model.digest_embeddings.dtype), return_attentions=True)
    return torch.stack([a[0].float().mean(0) for a in attentions])


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks with ties averaged (Spearman's convention), so equal values carry no order."""
    less = (x[None, :] < x[:, None]).sum(1)
    equal = (x[None, :] == x[:, None]).sum(1)
    return (less + (equal - 1) / 2).double()


def band_statistics(weights: torch.Tensor, num_context: int, window: int = BAND_WINDOW) -> BandStatistics:
    """Sum up one layer's attention `weights` [k, n + k] whose first `num_context` keys are context."""
    context = weights[:, :num_context].double()
    mass = context.sum(-1)
    share = context / mass.clamp_min(1e-12)[:, None]
    centroid = share @ torch.arange(num_context, dtype=torch.float64)
    index = torch.arange(len(centroid), dtype=torch.float64)
    order = torch.corrcoef(torch.stack([_ranks(index), _ranks(centroid)]))[0, 1]
    width = min(window, num_context)
    best_window = share.unfold(-1, width, 1).sum(-1).amax(-1)
    return BandStatistics(
        order_correlation=float(torch.nan_to_num(order)),  # constant centroids: no order at all
        in_order=float((centroid.diff() > 0).double().mean()) if len(centroid) > 1 else 1.0,
        window_mass=float(best_window.mean()),
        uniform_window_mass=width / num_context,
        context_mass=float(mass.mean()),
    )


def analyse(model: ICFormerModel, chunks: list[torch.Tensor], window: int = BAND_WINDOW) -> list[BandStatistics]:
    """Band statistics per layer, averaged over `chunks` ([n_i, h] word embeddings, n_i <= L)."""
    per_chunk = [[band_statistics(w, len(c), window) for w in digest_attention(model, c)] for c in chunks]
    if not per_chunk:
        raise ValueError("no chunks to analyse")
    layers = []
    for stats in zip(*per_chunk):
        rows = [asdict(s) for s in stats]
        layers.append(BandStatistics(**{key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}))
    return layers


@dataclass
class AttentionReport:
    """IC-Former's attention over the first chunk of one context, for display."""

    tokens: list[str]  # the chunk's context tokens as text pieces
    weights: torch.Tensor  # [layers, k, n + k], head-averaged (digest_attention)
    layers: list[BandStatistics]
    trained: bool


def first_chunk_ids(tokenizer, model: ICFormerModel, ids: list[int]) -> list[int]:
    """The ids of the first chunk `model` compresses: its prompt style's context prefix, then `ids`."""
    return (context_prefix_ids(tokenizer, prompt_style(model)) + list(ids))[: model.config.chunk_size]


def analyse_ids(target, model: ICFormerModel, contexts: list[list[int]], window: int = BAND_WINDOW):
    """`analyse` over the first chunk of each context (token ids), embedded by `target` (a TargetLLM)."""
    chunks = [target.embed(torch.tensor(first_chunk_ids(target.tokenizer, model, ids), device=target.device))
              for ids in contexts]
    return analyse(model, chunks, window)


def context_attention(cc: "ContextCompressor", text: str | bytes, window: int = BAND_WINDOW) -> AttentionReport:
    """Where `cc`'s IC-Former digests look in the first chunk of `text` (the tokens it compresses)."""
    model = cc.icformer
    ids = first_chunk_ids(cc.tokenizer, model, cc.tokenize(text))
    weights = digest_attention(model, cc.target.embed(torch.tensor(ids, device=cc.device))).cpu()
    return AttentionReport(
        tokens=[cc.tokenizer.decode([i]) for i in ids], weights=weights,
        layers=[band_statistics(w, len(ids), window) for w in weights], trained=model.trained,
    )


# --------------------------------------------------------------------------- CLI


def _read_text(path: Path) -> str:
    if path.suffix == ".json":
        return json.loads(path.read_text())["text"]
    return path.read_text()
