"""`CompressorSpec`: plain data naming everything a `ContextCompressor` is built from.

Profiles resolve to one, the CLI's flags fill one, and `compressor.build_compressor` is the
one function that turns it into models, so there is a single way to assemble a compressor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .defaults import EMBEDDED_K, EMBEDDED_L


@dataclass(frozen=True)
class CompressorSpec:
    llm: str | None = None  # HF id, local dir or .gguf; None: the embedded SmolLM2
    gguf_file: str | None = None  # a GGUF inside an HF repo / dir
    icformer: str | Path | None = None  # IC-Former checkpoint dir; None: seeded random (trained=False)
    icae: str | Path | bool | None = None  # ICAE checkpoint dir; True: seeded random; None/False: no ICAE
    device: str | None = None  # None: cuda when present
    dtype: str | None = None  # torch dtype name; None: bfloat16 on GPU, float32 on CPU
    seed: int = 0  # for the random compressors
    num_digest_tokens: int = EMBEDDED_K  # k of the random compressors (a checkpoint's config wins)
    chunk_size: int = EMBEDDED_L  # L of the random compressors
