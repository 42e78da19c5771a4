"""Compression FLOPs three ways: the paper's formulas, an exact count, and a measurement.

docs/paper.md §4.3 counts matrix multiplications only, 2 FLOPs per multiply-add, and attention
over the full (unmasked) score matrix, as kernels compute it. Symbols: b rows (contexts x
chunks), s tokens per chunk, k digests/slots per chunk, h hidden, m FFN width.

* paper: the formulas as printed (full multi-head attention, no LoRA);
* exact: the matmuls the code runs for the real shapes, in a call at inference after the
  first. For IC-Former it is below the paper's formula: the first layer's q projection of the
  digest rows is computed once per call, not once per chunk, and the digest rows' k/v
  projections (every layer) read only weights, so inference keeps them between calls.
  For ICAE it differs by grouped-query attention (smaller k/v projections) and by the LoRA
  matmuls (2 FLOPs per LoRA weight per token);
* measured: `torch.utils.flop_counter.FlopCounterMode` around the real call.

Chunking applies to both methods (a 2048-token context is 4 chunks of 512), and every chunk
is counted at the widest chunk's length, because the batched code pads to it. ICAE's count
excludes the lm_head: compression reads final-norm states, never logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .compressors.modeling_icformer import ICFormerConfig, chunk_bounds

if TYPE_CHECKING:  # importing them here would load peft (icae) and the whole library (compressor)
    from .compressor import ContextCompressor
    from .compressors.icae import ICAEModel


def paper_icae_flops(*, b: int, s: int, k: int, h: int, m: int, layers: int) -> int:
    """ICAE per layer: 4bh(s+k)(2h+s+k) + 6bhm(s+k), times the LLM's layers."""
    t = s + k
    return layers * (4 * b * h * t * (2 * h + t) + 6 * b * h * m * t)


def paper_icformer_flops(*, b: int, s: int, k: int, h: int, m: int, layers: int) -> int:
    """IC-Former per layer: 4bkh^2 + 4bh(s+k)(h+k) + 6bkhm, times its layers."""
    return layers * (4 * b * k * h * h + 4 * b * h * (s + k) * (h + k) + 6 * b * k * h * m)


def chunk_grid(num_tokens: int, chunk_size: int) -> tuple[int, int]:
    """(chunks per context, tokens each chunk is computed at: the widest, as padded)."""
    spans = chunk_bounds(num_tokens, chunk_size)
    return len(spans), max(end - start for start, end in spans)


@dataclass(frozen=True)
class Flops:
    paper: int
    exact: int


def icformer_flops(config: ICFormerConfig, num_tokens: int, batch: int = 1) -> Flops:
    """IC-Former compressing `batch` contexts of `num_tokens` tokens each, in one call.

    The paper counts every projection once per chunk, those that read only the digest
    embeddings included: each layer's k and v projections of the k digest rows (2 x 2kh^2)
    and the first layer's q projection (2kh^2). The code computes the q projection once per
    call and keeps the k/v projections from earlier calls (the first call after a weight
    change computes them once more: `digest_kv_flops`).
    """
    chunks, s = chunk_grid(num_tokens, config.chunk_size)
    b, k, h, layers = batch * chunks, config.num_digest_tokens, config.hidden_size, config.num_layers
    paper = paper_icformer_flops(b=b, s=s, k=k, h=h, m=config.intermediate_size, layers=layers)
    first_q = 2 * k * h * h
    return Flops(paper=paper, exact=paper - b * (digest_kv_flops(config) + first_q) + first_q)


def digest_kv_flops(config: ICFormerConfig) -> int:
    """What `ICFormerBlock.digest_kv` costs in all layers when nothing is kept: k and v projections of k rows."""
    return config.num_layers * 2 * (2 * config.num_digest_tokens * config.hidden_size ** 2)


def icae_flops(icae: ICAEModel, num_tokens: int, batch: int = 1) -> Flops:
    """ICAE (its LoRA included) compressing `batch` contexts of `num_tokens` tokens each.

    Assumes a Llama-style decoder: q/k/v/o projections (k/v with the config's key-value
    heads) and a gated 3-matrix FFN.
    """
    llm = icae.target.model.config
    llm = llm.get_text_config() if hasattr(llm, "get_text_config") else llm
    h, m, layers = llm.hidden_size, llm.intermediate_size, llm.num_hidden_layers
    heads = llm.num_attention_heads
    head_dim = getattr(llm, "head_dim", None) or h // heads
    q_width, kv_width = heads * head_dim, (getattr(llm, "num_key_value_heads", None) or heads) * head_dim
    chunks, s = chunk_grid(num_tokens, icae.config.chunk_size)
    b, k = batch * chunks, icae.config.num_digest_tokens
    t = s + k
    projections = 2 * b * t * (2 * h * q_width + 2 * h * kv_width)  # q and o; k and v
    attention = 4 * b * t * t * q_width  # scores and weighted values, every query head
    ffn = 6 * b * t * h * m
    lora = 2 * b * t * sum(p.numel() for p in icae.lora.parameters())  # one multiply-add per weight per token
    return Flops(
        paper=paper_icae_flops(b=b, s=s, k=k, h=h, m=m, layers=layers),
        exact=layers * (projections + attention + ffn) + lora,
    )


def _sdpa_flops(query_shape, key_shape, value_shape, *args: Any, **kwargs: Any) -> int:
    """SDPA's matmul FLOPs. With grouped-query attention (fewer K/V heads than query heads, as
    CUDA kernels take them) every query head still computes a full score matrix."""
    batch, heads = query_shape[:2]
    return sdpa_flop_count(query_shape, (batch, heads, *key_shape[2:]), (batch, heads, *value_shape[2:]))


# FlopCounterMode does not know the CPU kernel SDPA dispatches to, and its formulas for the CUDA
# kernels reject grouped-query shapes (SmolLM2: 9 query heads, 3 K/V heads).
_EXTRA_FORMULAS = {
    op: _sdpa_flops
    for op in (
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu,
        torch.ops.aten._scaled_dot_product_flash_attention,
        torch.ops.aten._scaled_dot_product_efficient_attention,
        torch.ops.aten._scaled_dot_product_cudnn_attention,
    )
}


def measure_flops(fn: Callable[[], Any]) -> tuple[int, Any]:
    """(matmul FLOPs that `fn()` executed, its result), counted by FlopCounterMode.

    Run it on frozen models (as ContextCompressor keeps them): under no_grad, the counter's
    module tracker fails on views of parameters that still require grad.
    """
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        result = fn()
    return counter.get_total_flops(), result


def compression_flops(cc: ContextCompressor, method: str, num_tokens: int, batch_size: int = 1) -> int:
    """Exact FLOPs for a `ContextCompressor` to compress with `method` ("full" compresses nothing: 0)."""
    if method == "icformer":
        return icformer_flops(cc.icformer.config, num_tokens, batch_size).exact
    if method == "icae":
        return icae_flops(cc.model_for("icae"), num_tokens, batch_size).exact
    if method == "full":
        return 0
    raise ValueError(f"unknown method {method!r}; choose icformer, icae or full")
