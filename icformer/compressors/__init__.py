"""The compression methods, one module each, behind one interface (`base.CompressorModel`): token ids
in, vectors for the LLM out, task vectors, and the checkpoint files of `checkpoint.py`.

    modeling_icformer.py  IC-Former: cross-attention over the LLM's word embeddings (the paper)
    icae.py               ICAE: the LLM itself with LoRA (the baseline)

A new method is a module here with a `CompressorModel` subclass and one line in `METHODS`; the rest
of the library (training, benchmarks, evaluation, the app) reaches it by name through this registry.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from ..defaults import EMBEDDED_K, EMBEDDED_L
from ..llm import TargetLLM
from .base import CompressorModel
from .checkpoint import checkpoint_method

# method -> (module in this package, class). Imported on first use: ICAE pulls in peft (~2 s).
METHODS = {"icformer": ("modeling_icformer", "ICFormerModel"), "icae": ("icae", "ICAEModel")}


def model_class(method: str) -> type[CompressorModel]:
    if method not in METHODS:
        raise ValueError(f"unknown compressor {method!r}; choose one of {list(METHODS)}")
    module, name = METHODS[method]
    return getattr(importlib.import_module(f".{module}", __name__), name)


def load_model(directory: str | Path, target: TargetLLM, method: str | None = None, *,
               dtype: torch.dtype | None = None) -> CompressorModel:
    """The checkpoint in `directory` on `target`'s device, in `dtype` (default: the LLM's; training
    keeps float32 weights beside a bf16 LLM); `method` refuses another kind."""
    found = checkpoint_method(directory, method)
    cls = model_class(found)
    if method is not None and found != method:
        raise ValueError(f"{directory} holds a {found!r} checkpoint, not {method!r}")
    dtype = dtype or target.dtype
    model = cls.load(directory, target, dtype=dtype)
    check_fits(model, target)
    return model.to(device=target.device, dtype=dtype)


def new_model(method: str, target: TargetLLM, *, seed: int = 0, num_digest_tokens: int = EMBEDDED_K,
              chunk_size: int = EMBEDDED_L, dtype: torch.dtype | None = None, **options: Any) -> CompressorModel:
    """A freshly initialised compressor sized for `target` (trained=False), in `dtype` (default: the
    LLM's); `options` go to its config."""
    cls, dtype = model_class(method), dtype or target.dtype
    torch.manual_seed(seed)
    model = cls.create(target, num_digest_tokens=num_digest_tokens, chunk_size=chunk_size, dtype=dtype, **options)
    return model.to(device=target.device, dtype=dtype)


def check_fits(model: CompressorModel, target: TargetLLM) -> None:
    """Refuse a compressor whose vectors the LLM cannot read (another hidden size)."""
    if model.config.hidden_size != target.hidden_size:
        source = f" ({model.source_dir})" if model.source_dir else ""
        raise ValueError(f"{model.method} checkpoint{source} has hidden size {model.config.hidden_size}, "
                         f"but the LLM {target.name} has hidden size {target.hidden_size}")
