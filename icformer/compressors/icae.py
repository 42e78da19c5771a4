"""ICAE, the baseline IC-Former is measured against (Ge et al., ICLR 2024, arXiv 2307.06945).

As the IC-Former authors replicated it (docs/paper.md §3.4): the target LLM itself is the encoder,
with a LoRA adapter. Each <= L-token segment of a context is followed by k learnable memory
tokens; the LLM's last-layer states (the final-norm output its lm_head reads) at those k
positions are the segment's slots. The same LLM decodes the slots with the adapter off, so
ICAE costs a whole LLM pass over (s+k)-token segments, O((s+k)^2) per segment, where
IC-Former reads word embeddings only.

The adapter lives inside the shared, frozen target LLM (peft injects it in place). It is
switched off at construction and on only for the duration of :meth:`ICAEModel.compress`,
so everything else that runs the LLM sees the plain model.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from ..llm import TargetLLM
from .base import CompressorModel, Embed
from .checkpoint import load_checkpoint
from .modeling_icformer import ChunkedCompressorConfig, chunk_bounds

ADAPTER_NAME = "icae"


@dataclass
class ICAEConfig(ChunkedCompressorConfig):
    """ICAE's shape; defaults follow the ICAE code (k=128 per 512 tokens, LoRA r=128, alpha 32)."""

    hidden_size: int = 4096
    num_digest_tokens: int = 128  # k memory slots per segment (the name ContextCompressor reads)
    chunk_size: int = 512  # L: context tokens per segment at most
    lora_r: int = 128
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    # ICAE's LoraConfig names no target modules, so peft's default for Llama/Mistral applies:
    # the query and value projections of every layer.
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # AE: reconstruct the context; LM: continue it (pre-training); FT: answer a prompt.
    task_names: list[str] = field(default_factory=lambda: ["AE", "LM", "FT"])
    # ICAE keeps memory and task tokens in an nn.Embedding, whose default init is N(0, 1).
    init_std: float = 1.0

    def __post_init__(self) -> None:
        if self.num_digest_tokens < 1 or self.chunk_size < 1 or self.lora_r < 1:
            raise ValueError("num_digest_tokens (k), chunk_size (L) and lora_r must be positive")

    @classmethod
    def for_llm(
        cls, llm_config: Any, num_digest_tokens: int = 128, chunk_size: int = 512, **overrides: Any
    ) -> "ICAEConfig":
        """Size the memory tokens like the LLM's hidden states."""
        text_config = llm_config.get_text_config() if hasattr(llm_config, "get_text_config") else llm_config
        return cls(
            hidden_size=text_config.hidden_size,
            num_digest_tokens=num_digest_tokens,
            chunk_size=chunk_size,
            **overrides,
        )


class ICAEModel(CompressorModel):
    """Memory tokens, task vectors and a LoRA adapter injected into the shared target LLM.

    Only these are parameters of this module (so `.to`, `.train`, `.requires_grad_` and
    `state_dict` reach exactly the trainable part); the LLM stays frozen and is not a
    submodule. One ICAE adapter per LLM: load a second ICAE on a fresh LLM.
    """

    method = "icae"

    def __init__(self, config: ICAEConfig, target: TargetLLM, dtype: torch.dtype | None = None) -> None:
        super().__init__(config)
        if config.hidden_size != target.hidden_size:
            raise ValueError(
                f"icae checkpoint has hidden size {config.hidden_size}, "
                f"but the LLM {target.name} has hidden size {target.hidden_size}"
            )
        self.target = target  # a dataclass, not a Module: the LLM's weights stay out of state_dict
        h, std = config.hidden_size, config.init_std
        self.memory_embeddings = nn.Parameter(torch.randn(config.num_digest_tokens, h) * std)
        self.task_embeddings = nn.ParameterDict({t: nn.Parameter(torch.randn(h) * std) for t in config.task_names})
        self._lora_layers = self._inject(target.model)  # a plain list: not registered as submodules
        # Register the adapter's own pieces (not the wrapped base layers) under this module.
        self.lora = nn.ModuleDict({
            name.replace(".", "-"): nn.ModuleDict({
                "A": layer.lora_A[ADAPTER_NAME],
                "B": layer.lora_B[ADAPTER_NAME],
                "dropout": layer.lora_dropout[ADAPTER_NAME],
            })
            for name, layer in self._lora_layers
        })
        # The adapter is a global switch on a shared model: a lock keeps a compression on one
        # thread from leaking the adapter into a decode on another.
        self._switch = threading.RLock()
        self.to(device=target.device, dtype=dtype or target.dtype)  # peft made the adapter in the LLM's dtype

    def _inject(self, model: nn.Module) -> list[tuple[str, LoraLayer]]:
        if any(isinstance(m, LoraLayer) and ADAPTER_NAME in m.lora_A for m in model.modules()):
            raise ValueError("this LLM already carries an ICAE adapter; load a fresh LLM for a second ICAE")
        config = self.config
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_target_modules),
            bias="none",
        )
        inject_adapter_in_model(lora, model, adapter_name=ADAPTER_NAME)
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer) and ADAPTER_NAME in m.lora_A]
        for _, layer in layers:
            layer._disable_adapters = True  # see _adapter
        return layers

    # ----------------------------------------------------------------------- adapter switch

    @contextmanager
    def _adapter(self, enabled: bool) -> Iterator[None]:
        """Switch the LoRA adapter for the block, restoring the previous state afterwards.

        peft's public toggles (`enable_adapters`, `disable_adapters`) also flip the LoRA
        weights' requires_grad; flipping it off between an encoder pass and backward makes
        autograd silently drop their gradients. So only the on/off flag is set here.
        """
        with self._switch:
            previous = [layer.disable_adapters for _, layer in self._lora_layers]
            for _, layer in self._lora_layers:
                layer._disable_adapters = not enabled
            try:
                yield
            finally:
                for (_, layer), state in zip(self._lora_layers, previous):
                    layer._disable_adapters = state

    def adapter_disabled(self):
        """Run the shared LLM as the plain decoder (ICAE decodes with the adapter off)."""
        return self._adapter(False)

    # ----------------------------------------------------------------------- compression

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA weights, memory tokens and task vectors: everything ICAE trains (never the LLM)."""
        return list(self.parameters())

    def encode(self, ids: list[list[int]], embed: Embed) -> list[torch.Tensor]:
        """The shared LLM, adapter on, over each context's tokens (`embed` is that LLM's own)."""
        return self.compress(ids)

    def compress(self, contexts: list[list[int]]) -> list[torch.Tensor]:
        """Every segment of every context in one batched LLM pass; [num_chunks*k, hidden] each.

        Rows are left-padded so that the k memory tokens sit in the last k columns of every
        row; explicit positions restart at 0 in each segment, so a row's result does not
        depend on what it is batched with. Gradients flow when called outside no_grad.
        """
        k = self.config.num_digest_tokens
        bounds = [chunk_bounds(len(ids), self.config.chunk_size) for ids in contexts]
        segments = [ids[start:end] for ids, spans in zip(contexts, bounds) for start, end in spans]
        width = max(len(s) for s in segments)
        device = self.memory_embeddings.device
        ids = torch.tensor([[0] * (width - len(s)) + list(s) for s in segments], device=device)
        lengths = torch.tensor([len(s) for s in segments], device=device)
        token_mask = torch.arange(width, device=device) >= (width - lengths)[:, None]
        mask = torch.cat([token_mask, token_mask.new_ones(len(segments), k)], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        embeds = self.target.embed(ids)
        memory = self.memory_embeddings.to(embeds.dtype).expand(len(segments), k, -1)
        inputs = torch.cat([embeds, memory], dim=1)
        # The base model (no lm_head): ICAE needs the final-norm states, not logits.
        with self._adapter(True):
            hidden = self.target.model.base_model(
                inputs_embeds=inputs, attention_mask=mask.long(), position_ids=positions, use_cache=False
            ).last_hidden_state
        slots = hidden[:, -k:]
        return [s.flatten(0, 1) for s in slots.split([len(spans) for spans in bounds])]

    # ----------------------------------------------------------------------- persistence

    @classmethod
    def create(cls, target: TargetLLM, *, num_digest_tokens: int, chunk_size: int, dtype: torch.dtype | None = None,
               **options: Any) -> "ICAEModel":
        return cls(ICAEConfig.for_llm(target.model.config, num_digest_tokens, chunk_size, **options), target, dtype)

    @classmethod
    def load(cls, directory: str | Path, target: TargetLLM, *, dtype: torch.dtype | None = None) -> "ICAEModel":
        return cls.from_pretrained(directory, target, dtype=dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, target: TargetLLM, *,
                        dtype: torch.dtype | None = None) -> "ICAEModel":
        """Inject a saved ICAE's adapter into `target` and load its weights."""
        checkpoint = load_checkpoint(directory, cls.method, device=target.device)
        model = cls(ICAEConfig.from_dict(checkpoint.config), target, dtype)
        model.load_state_dict(checkpoint.state_dict)
        model.trained, model.source_dir = checkpoint.trained, Path(directory)
        return model
