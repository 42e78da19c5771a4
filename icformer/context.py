"""A compressed context: the vectors a frozen LLM reads, plus what is needed to trust them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "icformer-compressed-context"
VERSION = 1
REQUIRED_KEYS = ("method", "llm", "llm_hash", "hidden_size", "k", "L", "num_chunks", "num_tokens", "version")


@dataclass
class CompressedContext:
    """`vectors` [num_vectors, hidden] stand in for the context's `num_tokens` tokens.

    `metadata` is plain JSON-able data (method, llm, llm_hash, hidden_size, k, L,
    num_chunks, num_tokens, version, trained, ...); `timings` holds seconds per stage.
    """

    vectors: torch.Tensor
    metadata: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_vectors(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.metadata["num_tokens"])

    @property
    def method(self) -> str:
        return str(self.metadata["method"])

    @property
    def trained(self) -> bool:
        """False when the compressor is random or its training run has not finished."""
        return bool(self.metadata.get("trained", False))

    @property
    def compression_ratio(self) -> float:
        return self.num_tokens / self.num_vectors

    def save(self, path: str | Path) -> Path:
        """Write a .safetensors file: one tensor, metadata and timings as JSON strings."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"format": FORMAT, "metadata": json.dumps(self.metadata), "timings": json.dumps(self.timings)}
        save_file({"vectors": self.vectors.detach().contiguous().cpu()}, str(path), metadata=header)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "CompressedContext":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no compressed context at {path}")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as handle:
                header = handle.metadata() or {}
                vectors = handle.get_tensor("vectors")
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{path} is not a readable .safetensors file: {err}") from err
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} is not a compressed context (format={header.get('format')!r})")
        metadata = json.loads(header["metadata"])
        missing = [k for k in REQUIRED_KEYS if k not in metadata]
        if missing:
            raise ValueError(f"{path} lacks metadata keys {missing}")
        if metadata["version"] > VERSION:
            raise ValueError(f"{path} has format version {metadata['version']}; this library reads up to {VERSION}")
        return cls(vectors=vectors, metadata=metadata, timings=json.loads(header.get("timings", "{}")))
