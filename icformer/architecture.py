"""Random-weight stand-ins for a target LLM: compression speed depends on shapes, not weights.

The paper's speed rows are for Llama-2-7B, whose weights are gated, and a lent GPU machine
can't receive even the embedded model's weights in one call. A benchmark needs neither:
every matmul, attention and launch costs the same for random numbers of the same shapes.
An *architecture directory* holds only a config.json and tokenizer files; `random_llm`
builds the model from it with seeded random weights, directly on the target device.

    write_architecture("llama-2-7b", "out/arch/llama-2-7b")   # here, from the embedded tokenizer
    target = random_llm("out/arch/llama-2-7b", device="cuda")  # there, no weights needed

Architectures reuse the embedded SmolLM2 tokenizer and chat template (the only tokenizer on
every machine), so "llama-2-7b" has Llama-2-7B's layers and widths with SmolLM2's 49,152-token
vocabulary instead of 32,000: that changes the embedding table and the one-position LM head of
a prefill, not the compressor or the transformer body.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .llm import TargetLLM, _resolve_device, embedded_dir, frozen

# Overrides of the embedded SmolLM2-135M config; the Llama-2-7B numbers are from the Llama 2 paper
# (Touvron et al., 2023: 32 layers, width 4096, 32 heads, SwiGLU FFN 11008, 4k context, RoPE base 1e4).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {},
    "llama-2-7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, head_dim=128, max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, tie_word_embeddings=False,
    ),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def write_architecture(name: str, out_dir: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """Write `name`'s config.json plus the embedded tokenizer into `out_dir` (a few MB, no weights)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    source = embedded_dir(cache_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    config.update(ARCHITECTURES[name])
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for file in TOKENIZER_FILES:
        if (source / file).is_file():
            shutil.copy2(source / file, out / file)
    return out


def random_llm(
    spec: str | Path, *, device: str | None = None, dtype: torch.dtype | None = None, seed: int = 0,
    cache_dir: str | Path | None = None,
) -> TargetLLM:
    """A frozen LLM with seeded random weights: `spec` is an architecture directory or a name in
    ARCHITECTURES (written to a temporary directory from the embedded tokenizer first).

    The weights are drawn on the target device (a 7B model never passes through host memory);
    `dtype` defaults like `load_llm`'s: bfloat16 on CUDA, float32 elsewhere.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target_device = _resolve_device(device)
    dtype = dtype or (torch.bfloat16 if target_device.type == "cuda" else torch.float32)
    path = Path(spec)
    with tempfile.TemporaryDirectory() as tmp:
        if not path.is_dir():
            if str(spec) not in ARCHITECTURES:
                raise FileNotFoundError(
                    f"{spec!r} is neither an architecture directory (config.json + tokenizer) nor one of "
                    f"{', '.join(ARCHITECTURES)}"
                )
            path = write_architecture(str(spec), tmp, cache_dir=cache_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"architecture directory {path} has no config.json")
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
    torch.manual_seed(seed)
    with target_device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return frozen(model, tokenizer, f"{Path(spec).name} architecture (random weights)")
