"""IC-Former: a few cross-attention layers that digest a context into k vectors.

Wang et al., "In-Context Former: Lightning-fast Compressing Context for Large Language
Model" (EMNLP 2024 Findings, arXiv 2406.13618). Read this file top to bottom:

    config -> RMSNorm -> RoPE -> digest cross-attention -> SwiGLU FFN -> block -> model

The compressor never runs the target LLM. It reads the LLM's frozen word embeddings of a
context chunk (n <= L tokens) with k learnable digest tokens as queries:

* keys/values = concat(context embeddings, digest embeddings), re-normalised by each
  layer's own RMSNorm;
* digest i attends to every context token and to digests 1..i ("causal cross attention");
* RoPE: keys sit at positions 0..n+k-1 (context first), queries at the last k, n..n+k-1;
* the final-norm digest states are handed to the LLM as `inputs_embeds`, unprojected.

Longer contexts are cut into ceil(n/L) near-equal chunks; every chunk of every context is
compressed in one batched call and the digests are concatenated per context. The digest
embeddings are the same in every chunk, so whatever is computed from them alone (every
layer's digest keys/values before RoPE, the first layer's queries before RoPE) is computed
once per call and broadcast over the chunks. The digest keys/values read nothing but weights,
so inference with frozen weights keeps them from one call to the next (`ICFormerBlock.digest_kv`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import CompressorModel, Embed
from .checkpoint import load_checkpoint


# --------------------------------------------------------------------------- config


@dataclass
class ChunkedCompressorConfig:
    """What IC-Former and ICAE configs share: k vectors per chunk of L tokens, the prompt style,
    JSON round trip."""

    # How the LLM is prompted around the vectors (prompts.PROMPT_STYLES): checkpoints trained here
    # use "default"; import-checkpoint records the style a release was trained with. Keyword-only,
    # so subclass fields keep their positions; configs saved before it existed load as "default".
    prompt_style: str = field(default="default", kw_only=True)

    @property
    def k(self) -> int:
        return self.num_digest_tokens

    @property
    def L(self) -> int:  # noqa: N802 - the paper's symbol
        return self.chunk_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class ICFormerConfig(ChunkedCompressorConfig):
    """Shape and initialisation of an IC-Former; sizes default to the paper's Llama-2-7B."""

    hidden_size: int = 4096
    num_layers: int = 3
    num_heads: int = 32
    intermediate_size: int = 11008
    num_digest_tokens: int = 128  # k: digest vectors per chunk
    chunk_size: int = 512  # L: context tokens per chunk at most
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    # Deviations from the paper, off by default (docs/machine.md §4, docs/paper.md §2.1): the
    # reference code starts digests at zero and the final norm gain at 1.0, which puts outputs ~7x above
    # the scale of the word embeddings the LLM expects.
    digest_init_std: float = 0.0
    output_norm_init: float = 1.0
    # A locality prior (off in the paper): in the first `local_window_layers` layers digest i reads
    # only its own 1/k share of the chunk (plus digests 1..i), the band a pre-trained IC-Former ends
    # with (paper §4), so digests start distinct instead of as near-copies. docs/learning.md.
    local_window_layers: int = 0
    task_names: list[str] = field(default_factory=lambda: ["AE", "FT"])

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.num_digest_tokens < 1 or self.chunk_size < 1 or self.num_layers < 1:
            raise ValueError("num_digest_tokens (k), chunk_size (L) and num_layers must be positive")
        if not 0 <= self.local_window_layers <= self.num_layers:
            raise ValueError(f"local_window_layers must be in 0..num_layers={self.num_layers}, "
                             f"got {self.local_window_layers}")

    @classmethod
    def for_llm(cls, llm_config: Any, **overrides: Any) -> "ICFormerConfig":
        """Size the compressor like its target LLM, as the paper does (hidden, heads, FFN)."""
        values = dict(
            hidden_size=llm_config.hidden_size,
            num_heads=llm_config.num_attention_heads,
            intermediate_size=llm_config.intermediate_size,
        )
        values.update(overrides)
        return cls(**values)


# --------------------------------------------------------------------------- chunking


def chunk_bounds(num_tokens: int, chunk_size: int) -> list[tuple[int, int]]:
    """Cut n tokens into ceil(n/L) near-equal chunks, as the reference code does."""
    if num_tokens < 1:
        raise ValueError("cannot chunk an empty context")
    num_chunks = math.ceil(num_tokens / chunk_size)
    size = math.ceil(num_tokens / num_chunks)
    return [(start, min(start + size, num_tokens)) for start in range(0, num_tokens, size)]


def own_windows(lengths: torch.Tensor, k: int, n: int) -> torch.Tensor:
    """[B, k, n] bool: digest i's own share of each chunk, tokens [i*len/k, (i+1)*len/k).

    Shares follow each chunk's true length, so a short last chunk is still divided among all k
    digests; a chunk shorter than k gives each digest at least the token its share starts in.
    """
    i = torch.arange(k, device=lengths.device)
    start = torch.div(i[None] * lengths[:, None], k, rounding_mode="floor")  # [B, k]
    end = torch.maximum(torch.div((i[None] + 1) * lengths[:, None], k, rounding_mode="floor"), start + 1)
    j = torch.arange(n, device=lengths.device)
    return (j[None, None] >= start[..., None]) & (j[None, None] < end[..., None])


# --------------------------------------------------------------------------- layers


def rms_normalise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x over its root mean square (in fp32, returned in x's dtype): RMSNorm without its gain."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, init: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((hidden_size,), float(init)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * rms_normalise(x, self.eps)


class RotaryEmbedding(nn.Module):
    """Llama-style RoPE evaluated at arbitrary per-row positions (in fp32).

    Returns cos and sin of each position's angles, [B, T, 1, d/2]: one per rotated pair
    (dimensions i and i + d/2), broadcast over heads.

    The frequencies, and so the angles, never drop below float32 whatever `.to()`/`.half()` does
    to the module (as in the authors' reference): in bf16, at head_dim 128 and positions up to
    639, they would round the angles by up to 0.78 rad. A float64 module computes them in float64.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", self._frequencies(torch.device("cpu"), torch.float32), persistent=False)

    def _frequencies(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=dtype, device=device) / self.head_dim
        return 1.0 / (self.theta**exponents)

    def _apply(self, fn, recurse: bool = True):
        """Follow the module's moves and casts, but recompute the frequencies (exact) in float32 at least."""
        super()._apply(fn, recurse)
        dtype = torch.float64 if self.inv_freq.dtype == torch.float64 else torch.float32
        self.inv_freq = self._frequencies(self.inv_freq.device, dtype)
        return self

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        angles = (positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq)[:, :, None]  # [B, T, 1, d/2]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) of x [B or 1, T, heads, d] by its position's angle.

    Equal to Llama's x * cos + rotate_half(x) * sin, in fewer passes over memory (the key
    rotation is a visible part of compression time). With `out` (inference only: writes into
    a buffer have no autograd) each half is rotated in place in `out`, typically a slice of a
    larger buffer, which saves a concatenation.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    if out is None:
        return torch.cat([torch.addcmul(x1 * cos, x2, sin, value=-1), torch.addcmul(x2 * cos, x1, sin)], dim=-1)
    torch.mul(x1, cos, out=out[..., :half]).addcmul_(x2, sin, value=-1)
    torch.mul(x2, cos, out=out[..., half:]).addcmul_(x1, sin)
    return out


class DigestCrossAttention(nn.Module):
    """Digest queries attend over [context; digests] keys and values.

    Queries and the digests' key/value projections of batch size 1 are shared by every chunk;
    RoPE, which depends on each chunk's length, is where they fan out to the batch.
    """

    def __init__(self, config: ICFormerConfig) -> None:
        super().__init__()
        h, self.num_heads, self.head_dim = config.hidden_size, config.num_heads, config.head_dim
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, h, bias=False)
        self.v_proj = nn.Linear(h, h, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim)  # [B, T, heads, d]: RoPE on contiguous rows

    # Projecting is row-wise, so the shared digest rows are projected once and broadcast.
    def project_digests(self, digests: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value projections of the (normed) digest rows [1, k, h], before RoPE."""
        return self.k_proj(digests), self.v_proj(digests)

    def _keys(self, context: torch.Tensor, digest_keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Rotated keys of [context; digests]; at inference RoPE writes each part straight into its rows."""
        b, n, _ = context.shape
        parts = ((self._heads(self.k_proj(context)), cos[:, :n], sin[:, :n]),
                 (self._heads(digest_keys), cos[:, n:], sin[:, n:]))
        if torch.is_grad_enabled():
            return torch.cat([apply_rope(*part) for part in parts], dim=1)
        keys = context.new_empty(b, n + digest_keys.shape[1], self.num_heads, self.head_dim)
        for part, rows in zip(parts, (slice(None, n), slice(n, None))):
            apply_rope(*part, out=keys[:, rows])
        return keys

    def _values(self, context: torch.Tensor, digest_values: torch.Tensor) -> torch.Tensor:
        return self._heads(torch.cat([self.v_proj(context), digest_values.expand(len(context), -1, -1)], dim=1))

    def forward(
        self,
        queries: torch.Tensor,  # [B or 1, k, h]
        context: torch.Tensor,  # [B, n, h]
        digest_kv: tuple[torch.Tensor, torch.Tensor],  # project_digests of the digests: [1, k, h] each
        mask: torch.Tensor,  # [B, 1, k, n+k] additive: 0 = may attend, -inf = may not
        rope_q: tuple[torch.Tensor, torch.Tensor],
        rope_kv: tuple[torch.Tensor, torch.Tensor],
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Heads move in front of positions ([B, heads, T, d]) only after RoPE, for the attention.
        q = apply_rope(self._heads(self.q_proj(queries)), *rope_q).transpose(1, 2)
        k = self._keys(context, digest_kv[0], *rope_kv).transpose(1, 2)
        v = self._values(context, digest_kv[1]).transpose(1, 2)
        weights = None
        if return_weights:  # explicit softmax, for attention analysis and tests
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            weights = (scores + mask).softmax(-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        b, _, t, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), weights


class SwiGLU(nn.Module):
    def __init__(self, config: ICFormerConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ICFormerBlock(nn.Module):
    """Pre-norm block: cross-attention (own norms for queries and for K/V), then FFN."""

    def __init__(self, config: ICFormerConfig) -> None:
        super().__init__()
        self.query_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.kv_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = DigestCrossAttention(config)
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn = SwiGLU(config)
        self._kept_digest_kv: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    # The K/V input arrives normalised (rms_normalise of context and digests, shared by every
    # layer: only the gain differs); RMSNorm is row-wise, so norming the two apart equals
    # norming their concatenation.
    def digest_kv(self, digests_hat: torch.Tensor, source: tuple | None) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's key and value projections of the K/V-normed digest rows [1, k, h], before RoPE.

        They read only weights, never the context. Given `source` (the version of the digest rows,
        for frozen weights at inference) they are kept until it or a weight of this layer changes:
        a load or any in-place write bumps the tensors' version counters (a write through `.data`
        does not), and a move changes their device or dtype. Computed here, in the layer's own call,
        because sharded training gathers a layer's weights only for that call.
        """
        key = None
        if source is not None:
            weights = (self.kv_norm.weight, self.attn.k_proj.weight, self.attn.v_proj.weight)
            key = (source, *((id(w), w._version, w.dtype, w.device) for w in weights))
            if self._kept_digest_kv is not None and self._kept_digest_kv[0] == key:
                return self._kept_digest_kv[1]
        kv = self.attn.project_digests(self.kv_norm.weight * digests_hat)
        self._kept_digest_kv = None if key is None else (key, kv)
        return kv

    def forward(self, x, context_hat, digests_hat, mask, rope_q, rope_kv, return_weights=False, source=None):
        digest_kv = self.digest_kv(digests_hat, source)
        attended, weights = self.attn(
            self.query_norm(x), self.kv_norm.weight * context_hat, digest_kv, mask, rope_q, rope_kv, return_weights
        )
        x = x + attended  # in the first block, x is the shared [1, k, h] digests: this fans out
        x = x + self.ffn(self.ffn_norm(x))
        return x, weights


# --------------------------------------------------------------------------- model


class ICFormerModel(CompressorModel):
    """The compressor: digest embeddings, task vectors ([AE], [FT]) and the blocks."""

    method = "icformer"

    def __init__(self, config: ICFormerConfig) -> None:
        super().__init__(config)
        h = config.hidden_size
        self.digest_embeddings = nn.Parameter(torch.zeros(config.num_digest_tokens, h))
        # Task vectors are read by the LLM, not by the compressor: [AE] asks for the context
        # back (pre-training), [FT] marks digests to be used for a prompt (fine-tuning).
        self.task_embeddings = nn.ParameterDict({name: nn.Parameter(torch.zeros(h)) for name in config.task_names})
        self.layers = nn.ModuleList(ICFormerBlock(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(h, config.rms_norm_eps, init=config.output_norm_init)
        self.rope = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Trained from scratch: Linear ~ N(0, 0.02); digests per config (paper: zeros)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=self.config.initializer_range)
        if self.config.digest_init_std > 0:
            nn.init.normal_(self.digest_embeddings, std=self.config.digest_init_std)

    def forward(
        self,
        context_embeds: torch.Tensor,  # [B, n, h] word embeddings of one chunk per row
        context_mask: torch.Tensor | None = None,  # [B, n] bool, False = padding (right)
        return_attentions: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Digest a batch of chunks into [B, k, h] vectors (plus per-layer attention maps)."""
        b, n, _ = context_embeds.shape
        k, device, dtype = self.config.num_digest_tokens, context_embeds.device, context_embeds.dtype
        if n > self.config.chunk_size:
            raise ValueError(f"chunk of {n} tokens exceeds chunk_size L={self.config.chunk_size}")
        if context_mask is None:
            context_mask = torch.ones(b, n, dtype=torch.bool, device=device)
        lengths = context_mask.sum(-1)  # true chunk lengths; padding sits on the right

        digests = self.digest_embeddings.to(dtype)[None]  # [1, k, h], shared by every chunk

        # Positions: context token j -> j, digest i -> n_true + i; queries are the digests.
        query_pos = lengths[:, None] + torch.arange(k, device=device)
        key_pos = torch.cat([torch.arange(n, device=device).expand(b, n), query_pos], dim=1)
        rope_q, rope_kv = self.rope(query_pos, dtype), self.rope(key_pos, dtype)

        causal = torch.ones(k, k, dtype=torch.bool, device=device).tril().expand(b, k, k)
        readable = context_mask[:, None, :].expand(b, k, n)
        masks = [self._additive_mask(readable, causal, dtype)]
        if self.config.local_window_layers:
            masks.append(self._additive_mask(readable & own_windows(lengths, k, n), causal, dtype))

        # Every layer's K/V norm divides the same rows by the same RMS: done once, here.
        eps = self.config.rms_norm_eps
        context_hat, digests_hat = rms_normalise(context_embeds, eps), rms_normalise(digests, eps)
        # Frozen weights at inference: the layers keep their digest k/v while the digests stay this version.
        frozen = not torch.is_grad_enabled() and not any(p.requires_grad for p in self.parameters())
        d = self.digest_embeddings
        source = (id(d), d._version, d.dtype, d.device, dtype) if frozen else None
        x, attentions = digests, [] if return_attentions else None
        for index, layer in enumerate(self.layers):
            mask = masks[-1] if index < self.config.local_window_layers else masks[0]
            x, weights = layer(x, context_hat, digests_hat, mask, rope_q, rope_kv, return_attentions, source)
            if attentions is not None:
                attentions.append(weights)
        return self.norm(x), attentions

    @staticmethod
    def _additive_mask(context: torch.Tensor, digests: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, k, n+k] additive mask (0 may attend, -inf may not) from boolean [B, k, n] and [B, k, k].

        Additive and built once per call: a boolean mask would be converted again by every layer.
        """
        allowed = torch.cat([context, digests], dim=-1)[:, None]
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))

    def compress(self, contexts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Divide and conquer: all chunks of all contexts ([n_i, h] each) in one batched call."""
        bounds = [chunk_bounds(emb.shape[0], self.config.chunk_size) for emb in contexts]
        chunks = [emb[start:end] for emb, spans in zip(contexts, bounds) for start, end in spans]
        lengths = torch.tensor([c.shape[0] for c in chunks], device=chunks[0].device)
        padded = nn.utils.rnn.pad_sequence(chunks, batch_first=True)
        mask = torch.arange(padded.shape[1], device=padded.device) < lengths[:, None]
        digests, _ = self(padded, mask)
        return [d.flatten(0, 1) for d in digests.split([len(spans) for spans in bounds])]

    def encode(self, ids: list[list[int]], embed: Embed) -> list[torch.Tensor]:
        """The LLM's word embeddings of each context, compressed (the LLM itself never runs)."""
        device = self.digest_embeddings.device
        return self.compress([embed(torch.tensor(i, device=device)) for i in ids])

    @classmethod
    def create(cls, target: Any, *, num_digest_tokens: int, chunk_size: int, dtype: torch.dtype | None = None,
               **options: Any) -> "ICFormerModel":
        return cls(ICFormerConfig.for_llm(target.model.config, num_digest_tokens=num_digest_tokens,
                                          chunk_size=chunk_size, **options))

    @classmethod
    def load(cls, directory: str | Path, target: Any, *, dtype: torch.dtype | None = None) -> "ICFormerModel":
        return cls.from_pretrained(directory)  # float32, and it reads word embeddings only: no LLM to attach to

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> "ICFormerModel":
        checkpoint = load_checkpoint(directory, cls.method)
        model = cls(ICFormerConfig.from_dict(checkpoint.config))
        model.load_state_dict(checkpoint.state_dict)
        model.trained, model.source_dir = checkpoint.trained, Path(directory)
        return model.to(device)
