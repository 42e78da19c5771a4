"""One compressor model by method name: loaded from a checkpoint, or seeded random for an LLM.

The only place that maps "icformer" / "icae" to a class, so training, benchmarks, evaluation
and the app build their models the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .base import CompressorModel
from .checkpoint import checkpoint_method
from .defaults import EMBEDDED_K, EMBEDDED_L
from .llm import TargetLLM
from .modeling_icformer import ICFormerConfig, ICFormerModel

COMPRESSOR_METHODS = ("icformer", "icae")


def _check_method(method: str) -> None:
    if method not in COMPRESSOR_METHODS:
        raise ValueError(f"unknown compressor {method!r}; choose one of {list(COMPRESSOR_METHODS)}")


def load_model(directory: str | Path, target: TargetLLM, method: str | None = None) -> CompressorModel:
    """The checkpoint in `directory` on `target`'s device and dtype; `method` refuses another kind."""
    found = checkpoint_method(directory, method)
    _check_method(method or found)
    if method is not None and found != method:
        raise ValueError(f"{directory} holds a {found!r} checkpoint, not {method!r}")
    if found == "icae":
        from .icae import ICAEModel  # peft is imported only by runs that use ICAE

        model = ICAEModel.from_pretrained(directory, target)
    else:
        model = ICFormerModel.from_pretrained(directory)
    check_fits(model, target)
    return model.to(device=target.device, dtype=target.dtype)


def new_model(method: str, target: TargetLLM, *, seed: int = 0, num_digest_tokens: int = EMBEDDED_K,
              chunk_size: int = EMBEDDED_L, **options: Any) -> CompressorModel:
    """A freshly initialised compressor sized for `target` (trained=False); `options` go to its config."""
    _check_method(method)
    torch.manual_seed(seed)
    llm_config = target.model.config
    if method == "icae":
        from .icae import ICAEConfig, ICAEModel

        return ICAEModel(ICAEConfig.for_llm(llm_config, num_digest_tokens, chunk_size, **options), target)
    config = ICFormerConfig.for_llm(llm_config, num_digest_tokens=num_digest_tokens, chunk_size=chunk_size, **options)
    return ICFormerModel(config).to(device=target.device, dtype=target.dtype)


def check_fits(model: CompressorModel, target: TargetLLM) -> None:
    """Refuse a compressor whose vectors the LLM cannot read (another hidden size)."""
    if model.config.hidden_size != target.hidden_size:
        source = f" ({model.source_dir})" if model.source_dir else ""
        raise ValueError(f"{model.method} checkpoint{source} has hidden size {model.config.hidden_size}, "
                         f"but the LLM {target.name} has hidden size {target.hidden_size}")
