"""What every compressor is to the rest of the library: token ids in, vectors for the LLM out.

IC-Former reads the LLM's word embeddings, ICAE runs the LLM itself over the tokens; both take
the same inputs here (`encode`), carry task vectors the LLM reads, and save the same
checkpoint files (checkpoint.py). Code above this layer never asks which method it holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .checkpoint import save_checkpoint

Embed = Callable[[torch.Tensor], torch.Tensor]  # token ids [n] -> the LLM's word embeddings [n, h]


class CompressorModel(nn.Module):
    """Base of ICFormerModel and ICAEModel; subclasses set `method` and build their parameters."""

    method: str

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.trained = False  # set by from_pretrained from the checkpoint's own record
        self.source_dir: Path | None = None  # the checkpoint it was loaded from (model card beside it)

    @classmethod
    def create(cls, target: Any, *, num_digest_tokens: int, chunk_size: int, dtype: torch.dtype | None = None,
               **options: Any) -> "CompressorModel":
        """A fresh model sized for the LLM `target` (k vectors per chunk of L tokens; `options`: its config).

        `dtype`: its weights' dtype, for a model whose modules live inside the LLM (ICAE's adapter)."""
        raise NotImplementedError

    @classmethod
    def load(cls, directory: str | Path, target: Any, *, dtype: torch.dtype | None = None) -> "CompressorModel":
        """The model saved in `directory`, for the LLM `target` (`dtype` as in `create`)."""
        raise NotImplementedError

    def encode(self, ids: list[list[int]], embed: Embed) -> list[torch.Tensor]:
        """Vectors for each context ([num_chunks * k, hidden] each), in one batched call."""
        raise NotImplementedError

    def task_embedding(self, name: str) -> torch.Tensor:
        if name not in self.task_embeddings:
            raise KeyError(f"no task vector {name!r}; this model has {list(self.task_embeddings)}")
        return self.task_embeddings[name]

    def save_pretrained(self, directory: str | Path, *, state_dict: dict[str, torch.Tensor] | None = None,
                        trained: bool | None = None, **record: Any) -> Path:
        """Write config.json and model.safetensors (digest/memory and task vectors included).

        `state_dict`: this model's weights gathered elsewhere (a sharded training run, whose
        own parameters are only shards); by default, the module's own.
        """
        return save_checkpoint(directory, self.method, self.config.to_dict(),
                               self.state_dict() if state_dict is None else state_dict,
                               trained=self.trained if trained is None else trained, **record)
