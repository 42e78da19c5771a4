"""`python -m icformer import-checkpoint`: bring released checkpoints into this project's format.

Two source layouts are understood (learnt from the public code; no file of theirs is copied):

* ``icformer``: a checkpoint of the reference IC-Former code (wonderful9462/IC-Former). A
  directory written by its ``ICFormerModel.save_pretrained`` (``config.json`` plus
  ``model.safetensors`` or ``pytorch_model.bin``, possibly sharded with an index) and the
  ``param.pt`` its trainer writes beside it, holding ``digest_embeddings`` [1, k, h], ``AE``
  [1, 1, h] and, after fine-tuning, ``FT`` [1, 1, h]. Names map one to one:

      encoder.layers.{i}.cross_input_layernorm.weight  -> layers.{i}.query_norm.weight
      encoder.layers.{i}.context_layernorm.weight      -> layers.{i}.kv_norm.weight
      encoder.layers.{i}.cross_attn.{q,k,v,o}_proj     -> layers.{i}.attn.{q,k,v,o}_proj
      encoder.layers.{i}.post_attention_layernorm      -> layers.{i}.ffn_norm
      encoder.layers.{i}.mlp.{gate,up,down}_proj       -> layers.{i}.ffn.{gate,up,down}_proj
      encoder.norm.weight                              -> norm.weight
      param.pt digest_embeddings / AE / FT             -> digest_embeddings / task_embeddings.*

  The reference can also build layers with self-attention instead of cross-attention
  (``cross_attention_frequency`` > 1), grouped K/V heads, biases, a context width other than
  the hidden size or scaled RoPE; this project's IC-Former has none of those (docs/paper.md §2),
  so such configs are refused with the reason rather than converted approximately.

* ``icae``: an ICAE v2 release (getao/icae, e.g. ``mistral_7b_ft_icae.safetensors``): the
  state of its ``ICAE`` module restricted to the LoRA weights of the encoder LLM
  (``icae.base_model.model.model.layers.{i}.self_attn.{q,v}_proj.lora_{A,B}.default.weight``)
  and ``memory_token_embed.weight`` [k + 3, h]: k memory tokens, then [AE], [LM], [FT].
  The file carries no LoRA alpha (the release scripts use 32) and no segment length (the
  release uses k x mean compression rate 4 = 512); both are options here.

Each converted config.json records the prompt style its source was trained and run with
(``icformer-reference`` / ``icae-v2``, see prompts.py), so it is prompted as its authors did.

`.pt` / `.bin` files are read with ``torch.load(weights_only=True)`` only: tensors, never code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .compressors.checkpoint import save_checkpoint
from .compressors.modeling_icformer import ICFormerConfig, ICFormerModel

ICAE_SPECIAL_TOKENS = ("AE", "LM", "FT")  # rows k, k+1, k+2 of memory_token_embed
ICAE_RELEASE_LORA_ALPHA = 32.0
ICAE_RELEASE_COMPRESSION_RATE = 4


# --------------------------------------------------------------------------- reading


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / .bin / .pt file (weights_only), or of a sharded index."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.name.endswith(".index.json"):
        index = json.loads(path.read_text())
        shards = sorted(set(index.get("weight_map", {}).values()))
        if not shards:
            raise ValueError(f"{path} lists no shards in its weight_map")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_tensors(path.parent / shard))
        return state
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{path} is not a readable .safetensors file: {err}") from err
    if path.suffix in (".bin", ".pt", ".pth"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError for anything but tensors and plain containers
            raise ValueError(
                f"could not read {path} with torch.load(weights_only=True) (only tensors and plain "
                f"containers are accepted, never pickled code): {type(err).__name__}: {err}"
            ) from err
        if not isinstance(state, dict):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a dict of tensors")
        return state
    raise ValueError(f"{path}: unknown weights format (expected .safetensors, .bin, .pt or an .index.json)")


def _weights_file(directory: Path) -> Path:
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"{directory} has no model.safetensors or pytorch_model.bin (nor a sharded index): "
        "expected a directory written by the reference ICFormerModel.save_pretrained"
    )


def _tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{what} is a {type(value).__name__}, not a tensor")
    return value.detach()


# --------------------------------------------------------------------------- IC-Former


def icformer_config_from_reference(values: dict[str, Any], *, chunk_size: int = 512) -> ICFormerConfig:
    """Our config for a reference config.json, refusing anything our model cannot represent."""
    model_type = values.get("model_type")
    if model_type not in (None, "icformer"):
        raise ValueError(f"config.json has model_type {model_type!r}, not an IC-Former ('icformer')")
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_query_tokens")
    absent = [k for k in required if k not in values]
    if absent:
        raise ValueError(f"config.json lacks {absent}: not a reference IC-Former config")
    h, heads = values["hidden_size"], values["num_attention_heads"]
    refusals = []
    frequency = values.get("cross_attention_frequency", 1)
    if frequency != 1:
        refusals.append(
            f"cross_attention_frequency={frequency}: layers whose index is not a multiple of it use "
            "self-attention instead of cross-attention, but every layer here is cross-attention"
        )
    kv_heads = values.get("num_key_value_heads") or heads
    if kv_heads != heads:
        refusals.append(f"num_key_value_heads={kv_heads} != num_attention_heads={heads} (grouped K/V heads)")
    context_width = values.get("context_hidden_size", h)
    if context_width != h:
        refusals.append(f"context_hidden_size={context_width} != hidden_size={h} (K/V read another width)")
    if values.get("attention_bias"):
        refusals.append("attention_bias=true (projections here have no bias)")
    if values.get("rope_scaling"):
        refusals.append(f"rope_scaling={values['rope_scaling']!r} (plain RoPE only)")
    if values.get("hidden_act", "silu") != "silu":
        refusals.append(f"hidden_act={values['hidden_act']!r} (the FFN here is SwiGLU with SiLU)")
    if refusals:
        raise ValueError("cannot convert this IC-Former: " + "; ".join(refusals))
    return ICFormerConfig(
        hidden_size=h,
        num_layers=values["num_hidden_layers"],
        num_heads=heads,
        intermediate_size=values["intermediate_size"],
        num_digest_tokens=values["num_query_tokens"],
        chunk_size=chunk_size,
        rope_theta=float(values.get("rope_theta", 10000.0)),
        rms_norm_eps=float(values.get("rms_norm_eps", 1e-6)),
        initializer_range=float(values.get("initializer_range", 0.02)),
        prompt_style="icformer-reference",
    )


_LAYER_NAMES = {
    "cross_input_layernorm.weight": "query_norm.weight",
    "context_layernorm.weight": "kv_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    **{f"cross_attn.{p}_proj.weight": f"attn.{p}_proj.weight" for p in "qkvo"},
    **{f"mlp.{p}_proj.weight": f"ffn.{p}_proj.weight" for p in ("gate", "up", "down")},
}
_REFERENCE_KEY = re.compile(r"^(?:icformer\.)?encoder\.(?:layers\.(\d+)\.(.+)|(norm\.weight))$")


def map_reference_icformer(
    weights: dict[str, torch.Tensor], params: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our state dict, notes) from the reference encoder weights and param.pt."""
    state, unknown, notes = {}, [], []
    for key, value in weights.items():
        match = _REFERENCE_KEY.match(key)
        if key.endswith("rotary_emb.inv_freq"):
            continue  # a recomputed buffer (RoPE frequencies follow rope_theta)
        if not match:
            unknown.append(key)
        elif match.group(3):
            state["norm.weight"] = _tensor(value, key)
        elif match.group(2) in _LAYER_NAMES:
            state[f"layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"] = _tensor(value, key)
        else:
            unknown.append(key)
    if unknown:
        hint = " (self-attention layers?)" if any("self_attn" in k or "input_layernorm" in k for k in unknown) else ""
        shown = ", ".join(sorted(unknown)[:6]) + (" ..." if len(unknown) > 6 else "")
        raise ValueError(f"weights this IC-Former has no place for{hint}: {shown}")
    if "digest_embeddings" not in params:
        raise ValueError("param.pt has no digest_embeddings")
    digests = _tensor(params["digest_embeddings"], "param.pt digest_embeddings")
    state["digest_embeddings"] = digests.reshape(-1, digests.shape[-1])
    for task in ("AE", "FT"):
        if task in params:
            state[f"task_embeddings.{task}"] = _tensor(params[task], f"param.pt {task}").reshape(-1)
        else:
            notes.append(f"param.pt has no {task} vector (a {'pre-training' if task == 'FT' else 'partial'} "
                         f"checkpoint?): [{task}] starts at zeros, as the reference initialises it")
    ignored = sorted(set(params) - {"digest_embeddings", "AE", "FT"})
    if ignored:
        notes.append(f"param.pt entries not used by IC-Former, ignored: {ignored}")
    return state, notes


def _check_shapes(model: torch.nn.Module, state: dict[str, torch.Tensor], config_name: str) -> None:
    """Every expected tensor present with the shape config.json implies; say which one is not."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key.startswith("task_embeddings.") and key not in state:
            state[key] = torch.zeros_like(tensor)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"the checkpoint lacks {missing} for the {config_name}")
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(t.shape)}"
             for k, t in expected.items() if tuple(state[k].shape) != tuple(t.shape)]
    if wrong:
        raise ValueError(f"tensor shapes do not match the {config_name}: " + "; ".join(wrong[:6]))


def _source_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def convert_icformer(
    source: str | Path,
    out: str | Path,
    *,
    chunk_size: int = 512,
    trained: bool = True,
    dtype: torch.dtype | None = None,
) -> tuple[Path, list[str]]:
    """Convert a reference IC-Former checkpoint directory; returns (output dir, notes).

    `chunk_size` (L) is not stored by the reference (its scripts default to 512). `dtype`
    defaults to the source's own (bf16 for the reference), so nothing is rounded.
    """
    source = Path(source)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(
            f"{source} has no config.json: expected the reference ICFormerModel.save_pretrained directory"
        )
    if not (source / "param.pt").is_file():
        raise FileNotFoundError(f"{source} has no param.pt (digest_embeddings, AE, FT saved by the reference trainer)")
    config = icformer_config_from_reference(json.loads((source / "config.json").read_text()), chunk_size=chunk_size)
    weights = load_tensors(_weights_file(source))
    params = load_tensors(source / "param.pt")
    state, notes = map_reference_icformer(weights, params)
    found_k = state["digest_embeddings"].shape[0]
    if found_k != config.num_digest_tokens:
        raise ValueError(
            f"config.json says num_query_tokens={config.num_digest_tokens}, "
            f"but param.pt holds {found_k} digest embeddings"
        )
    model = ICFormerModel(config)
    _check_shapes(model, state, f"config.json (hidden {config.hidden_size}, {config.num_layers} layers, "
                                f"FFN {config.intermediate_size}, k={config.num_digest_tokens})")
    target_dtype = dtype or _source_dtype(state)
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    model.to(target_dtype)
    record = {"converted_from": "wonderful9462/IC-Former checkpoint", "source": str(source.resolve()), "notes": notes}
    return model.save_pretrained(out, trained=trained, **record), notes


# --------------------------------------------------------------------------- ICAE v2


_LORA_KEY = re.compile(r"(?:^|\.)(model\.layers\.\d+\.[\w.]+?)\.lora_([AB])(?:\.([\w-]+))?\.weight$")


def map_icae_release(
    tensors: dict[str, torch.Tensor], *, chunk_size: int | None = None, lora_alpha: float = ICAE_RELEASE_LORA_ALPHA,
    lora_dropout: float = 0.05,
):
    """(ICAEConfig, our ICAE state dict, notes) from an ICAE v2 release's tensors."""
    from .compressors.icae import ICAEConfig

    if "memory_token_embed.weight" not in tensors:
        raise ValueError(
            "no memory_token_embed.weight: not an ICAE v2 release (ICAE v1's Llama-2 .pt uses another layout, "
            "which this converter does not read)"
        )
    memory = _tensor(tensors["memory_token_embed.weight"], "memory_token_embed.weight")
    k = memory.shape[0] - len(ICAE_SPECIAL_TOKENS)
    if memory.dim() != 2 or k < 1:
        raise ValueError(f"memory_token_embed.weight has shape {tuple(memory.shape)}; expected [k + 3, hidden]")
    hidden = memory.shape[1]
    lora: dict[str, dict[str, torch.Tensor]] = {}
    adapters, ignored = set(), []
    for key, value in tensors.items():
        match = _LORA_KEY.search(key)
        if match is None:
            if key != "memory_token_embed.weight":
                ignored.append(key)
            continue
        module, side, adapter = match.groups()
        adapters.add(adapter or "")
        if side in lora.setdefault(module, {}):
            raise ValueError(f"two lora_{side} weights for {module}: the file holds several LoRA adapters")
        lora[module][side] = _tensor(value, key)
    if not lora:
        raise ValueError("no LoRA weights (…layers.{i}.….lora_A/lora_B…weight) in the file")
    if len(adapters) > 1:
        raise ValueError(f"the file holds several LoRA adapters {sorted(adapters)}; expected one")
    ranks, notes = set(), []
    for module, pair in lora.items():
        if set(pair) != {"A", "B"}:
            raise ValueError(f"{module} has lora_{''.join(pair)} but not both lora_A and lora_B")
        a, b = pair["A"], pair["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"{module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not form a rank-r pair")
        ranks.add(a.shape[0])
    if len(ranks) != 1:
        raise ValueError(f"LoRA ranks differ across modules: {sorted(ranks)}")
    targets = sorted({module.rsplit(".", 1)[-1] for module in lora})
    if ignored:
        example = sorted(ignored)[0]
        notes.append(f"{len(ignored)} tensors that are not LoRA or memory tokens were ignored (e.g. {example})")
    config = ICAEConfig(
        hidden_size=hidden,
        num_digest_tokens=k,
        chunk_size=chunk_size or k * ICAE_RELEASE_COMPRESSION_RATE,
        lora_r=ranks.pop(),
        lora_alpha=float(lora_alpha),
        lora_dropout=float(lora_dropout),
        lora_target_modules=targets,
        task_names=list(ICAE_SPECIAL_TOKENS),
        prompt_style="icae-v2",
    )
    state = {"memory_embeddings": memory[:k].clone()}
    for i, task in enumerate(ICAE_SPECIAL_TOKENS):
        state[f"task_embeddings.{task}"] = memory[k + i].clone()
    for module, pair in sorted(lora.items()):
        name = module.replace(".", "-")  # how ICAEModel registers the adapter of `module`
        state[f"lora.{name}.A.weight"] = pair["A"].contiguous()
        state[f"lora.{name}.B.weight"] = pair["B"].contiguous()
    return config, state, notes


def convert_icae(
    source: str | Path,
    out: str | Path,
    *,
    chunk_size: int | None = None,
    lora_alpha: float = ICAE_RELEASE_LORA_ALPHA,
    lora_dropout: float = 0.05,
    trained: bool = True,
    llm: str | None = None,
) -> tuple[Path, list[str]]:
    """Convert an ICAE v2 release file; returns (output dir, notes).

    With `llm` (the LLM it was trained on: an id or a local directory), the result is loaded
    into that LLM as a check that every LoRA module exists there with the right shapes.
    """
    from .compressors.icae import ICAEModel

    source = Path(source)
    config, state, notes = map_icae_release(
        load_tensors(source), chunk_size=chunk_size, lora_alpha=lora_alpha, lora_dropout=lora_dropout
    )
    if llm is not None:  # check before writing anything
        from .llm import load_llm

        try:
            ICAEModel(config, load_llm(llm, device="cpu")).load_state_dict(state, strict=True)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"the converted ICAE does not fit the LLM {llm}: {err}") from err
    record = {"converted_from": "getao/icae v2 release", "source": str(source.resolve()), "notes": notes}
    return save_checkpoint(out, "icae", config.to_dict(), state, trained=trained, **record), notes


# --------------------------------------------------------------------------- CLI


def detect_format(source: Path) -> str:
    if source.is_dir():
        if (source / "config.json").is_file() and (source / "param.pt").is_file():
            return "icformer"
        raise ValueError(
            f"{source} is a directory without config.json + param.pt: not a reference IC-Former checkpoint"
        )
    if source.is_file():
        return "icae"
    raise FileNotFoundError(f"{source} does not exist")


__all__ = [
    "convert_icae",
    "convert_icformer",
    "icformer_config_from_reference",
    "load_tensors",
    "map_icae_release",
    "map_reference_icformer",
]
