"""import-checkpoint: synthetic files in the reference IC-Former and ICAE v2 layouts (random,
tiny) convert into our format and give the digests / slots of an independent computation."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from icformer.cli import main
from icformer.convert import convert_icae, convert_icformer, load_tensors
from icformer.compressors.icae import ICAEModel
from icformer.llm import load_llm
from icformer.compressors.modeling_icformer import ICFormerModel

H, HEADS, FFN, LAYERS, K = 32, 4, 48, 2, 4


# --------------------------------------------------------------------------- reference IC-Former files


def reference_config(**overrides) -> dict:
    """A config.json as the reference ICFormerConfig.save_pretrained writes it (tiny sizes)."""
    values = dict(
        model_type="icformer", architectures=["ICFormerModel"], hidden_size=H, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=HEADS, num_query_tokens=K, intermediate_size=FFN,
        hidden_act="silu", max_position_embeddings=2048, initializer_range=0.02, rms_norm_eps=1e-6,
        rope_theta=10000.0, rope_scaling=None, attention_bias=False, cross_attention_frequency=1,
        context_hidden_size=H, causal_attention=True, attention_dropout=0.0, torch_dtype="bfloat16",
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    values.update(overrides)
    return values


def reference_tensors(seed=0, layers=LAYERS, h=H, ffn=FFN, k=K, dtype=torch.bfloat16):
    """Random encoder weights under the reference's names, and param.pt's entries."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape, scale=0.2: (torch.randn(*shape, generator=g) * scale).to(dtype)  # noqa: E731
    norm = lambda: (1 + torch.randn(h, generator=g) * 0.1).to(dtype)  # noqa: E731
    weights = {}
    for i in range(layers):
        p = f"encoder.layers.{i}."
        for name in "qkvo":
            weights[p + f"cross_attn.{name}_proj.weight"] = rand(h, h)
        weights[p + "cross_input_layernorm.weight"] = norm()
        weights[p + "context_layernorm.weight"] = norm()
        weights[p + "post_attention_layernorm.weight"] = norm()
        weights[p + "mlp.gate_proj.weight"] = rand(ffn, h)
        weights[p + "mlp.up_proj.weight"] = rand(ffn, h)
        weights[p + "mlp.down_proj.weight"] = rand(h, ffn)
    weights["encoder.norm.weight"] = norm()
    params = {"digest_embeddings": rand(1, k, h, scale=1.0), "AE": rand(1, 1, h, scale=1.0),
              "FT": rand(1, 1, h, scale=1.0)}
    return weights, params


def write_reference(directory, config, weights, params, fmt="safetensors"):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    if fmt == "safetensors":
        save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(weights, directory / "pytorch_model.bin")
    torch.save(params, directory / "param.pt")
    return directory


def reference_digests(weights, params, config, context, chunk_size):
    """docs/paper.md §2 written out independently, in float64: causal cross-attention of k digests
    over [context; digests] with RoPE (keys at 0..n+k-1, queries at n..n+k-1), SwiGLU, final
    RMSNorm; a context longer than L is split into ceil(n/L) equal chunks."""
    w = {name: t.double() for name, t in weights.items()}
    digests = params["digest_embeddings"].double().reshape(-1, config["hidden_size"])
    heads, eps, theta = config["num_attention_heads"], config["rms_norm_eps"], config["rope_theta"]
    k, h = digests.shape
    d = h // heads

    def rms(x, gain):
        return gain * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    def rope(x, positions):  # x [heads, T, d]
        freqs = positions.double()[:, None] / theta ** (torch.arange(0, d, 2).double() / d)
        cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
        return x * cos + torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1) * sin

    def one_chunk(ctx):
        n = ctx.shape[0]
        kv = torch.cat([ctx, digests])
        allowed = torch.cat([torch.ones(k, n, dtype=torch.bool), torch.ones(k, k, dtype=torch.bool).tril()], 1)
        x = digests
        for i in range(config["num_hidden_layers"]):
            p = f"encoder.layers.{i}."
            q_in, kv_in = rms(x, w[p + "cross_input_layernorm.weight"]), rms(kv, w[p + "context_layernorm.weight"])
            split = lambda t: t.view(t.shape[0], heads, d).transpose(0, 1)  # noqa: E731
            q = rope(split(q_in @ w[p + "cross_attn.q_proj.weight"].T), torch.arange(n, n + k))
            keys = rope(split(kv_in @ w[p + "cross_attn.k_proj.weight"].T), torch.arange(n + k))
            values = split(kv_in @ w[p + "cross_attn.v_proj.weight"].T)
            scores = (q @ keys.transpose(-1, -2) / math.sqrt(d)).masked_fill(~allowed, float("-inf"))
            attended = (scores.softmax(-1) @ values).transpose(0, 1).reshape(k, h)
            x = x + attended @ w[p + "cross_attn.o_proj.weight"].T
            y = rms(x, w[p + "post_attention_layernorm.weight"])
            gate, up = y @ w[p + "mlp.gate_proj.weight"].T, y @ w[p + "mlp.up_proj.weight"].T
            x = x + (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
        return rms(x, w["encoder.norm.weight"])

    n = context.shape[0]
    size = math.ceil(n / math.ceil(n / chunk_size))
    return torch.cat([one_chunk(context[s:s + size].double()) for s in range(0, n, size)])


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_reference_icformer_converts_to_the_same_digests(tmp_path, fmt):
    config = reference_config()
    weights, params = reference_tensors()
    source = write_reference(tmp_path / "ref", config, weights, params, fmt)
    out, notes = convert_icformer(source, tmp_path / "ours", chunk_size=16)
    assert notes == []
    model = ICFormerModel.from_pretrained(out).float().eval()
    assert model.trained is True
    c = model.config
    assert (c.hidden_size, c.num_layers, c.num_heads, c.intermediate_size, c.k, c.L) == (H, LAYERS, HEADS, FFN, K, 16)
    assert model.digest_embeddings.dtype == torch.float32  # loaded as float32, stored as the source's bf16
    assert load_tensors(out / "model.safetensors")["norm.weight"].dtype == torch.bfloat16
    torch.testing.assert_close(model.task_embeddings["AE"], params["AE"].float().reshape(-1))
    torch.testing.assert_close(model.task_embeddings["FT"], params["FT"].float().reshape(-1))
    g = torch.Generator().manual_seed(1)
    for n in (11, 16, 37):  # one short chunk, one full chunk, three chunks of 13/13/11
        context = torch.randn(n, H, generator=g)
        with torch.no_grad():
            ours = model.compress([context])[0]
        expected = reference_digests(weights, params, config, context, chunk_size=16)
        assert ours.shape == (K * math.ceil(n / 16), H)
        torch.testing.assert_close(ours.double(), expected, rtol=1e-4, atol=1e-4)


def test_pretraining_checkpoint_without_ft_gets_a_zero_ft_and_a_note(tmp_path):
    weights, params = reference_tensors()
    del params["FT"]
    params["LM"] = torch.zeros(1, 1, H)
    source = write_reference(tmp_path / "ref", reference_config(), weights, params)
    out, notes = convert_icformer(source, tmp_path / "ours", dtype=torch.float32)
    model = ICFormerModel.from_pretrained(out)
    assert torch.equal(model.task_embeddings["FT"], torch.zeros(H)) and model.config.L == 512
    assert any("no FT vector" in note for note in notes) and any("'LM'" in note for note in notes)
    assert load_tensors(out / "model.safetensors")["norm.weight"].dtype == torch.float32


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(cross_attention_frequency=2), "self-attention instead of cross-attention"),
        (dict(num_key_value_heads=2), "grouped K/V heads"),
        (dict(context_hidden_size=64), "context_hidden_size=64"),
        (dict(attention_bias=True), "no bias"),
        (dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
        (dict(hidden_act="gelu"), "SwiGLU"),
        (dict(model_type="llama"), "not an IC-Former"),
    ],
)
def test_configs_we_cannot_represent_are_refused(tmp_path, overrides, message):
    weights, params = reference_tensors()
    source = write_reference(tmp_path / "ref", reference_config(**overrides), weights, params)
    with pytest.raises(ValueError, match=message):
        convert_icformer(source, tmp_path / "ours")
    assert not (tmp_path / "ours").exists()


def test_config_and_weights_that_disagree_error_clearly(tmp_path):
    weights, params = reference_tensors()
    source = write_reference(tmp_path / "a", reference_config(intermediate_size=64), weights, params)
    shapes = r"layers\.0\.ffn\.gate_proj\.weight: checkpoint \(48, 32\) vs config \(64, 32\)"
    with pytest.raises(ValueError, match=shapes):
        convert_icformer(source, tmp_path / "out")
    source = write_reference(tmp_path / "b", reference_config(num_hidden_layers=3), weights, params)
    with pytest.raises(ValueError, match=r"lacks \['layers\.2\."):
        convert_icformer(source, tmp_path / "out")
    source = write_reference(tmp_path / "c", reference_config(num_query_tokens=8), weights, params)
    with pytest.raises(ValueError, match="num_query_tokens=8, but param.pt holds 4 digest embeddings"):
        convert_icformer(source, tmp_path / "out")
    extra = dict(weights, **{"encoder.layers.1.self_attn.q_proj.weight": torch.zeros(H, H)})
    source = write_reference(tmp_path / "d", reference_config(), extra, params)
    with pytest.raises(ValueError, match=r"self-attention layers\?"):
        convert_icformer(source, tmp_path / "out")
    (tmp_path / "e").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        convert_icformer(tmp_path / "e", tmp_path / "out")


class NotATensor:
    """Anything torch.load(weights_only=True) must refuse to rebuild."""


def test_pickled_objects_are_never_loaded(tmp_path):
    weights, params = reference_tensors()
    source = write_reference(tmp_path / "ref", reference_config(), weights, params)
    torch.save({**params, "payload": NotATensor()}, source / "param.pt")
    with pytest.raises(ValueError, match=r"weights_only=True"):
        convert_icformer(source, tmp_path / "ours")


# --------------------------------------------------------------------------- ICAE v2 release files


def icae_release(target, *, k=K, r=4, seed=0, modules=("q_proj", "v_proj"), adapter="default"):
    """Tensors named as in an ICAE v2 .safetensors: LoRA of the PEFT-wrapped LLM + memory tokens."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, layer in enumerate(target.model.model.layers):
        for name in modules:
            linear = getattr(layer.self_attn, name)
            prefix = f"icae.base_model.model.model.layers.{i}.self_attn.{name}"
            tensors[f"{prefix}.lora_A.{adapter}.weight"] = torch.randn(r, linear.in_features, generator=g) * 0.3
            tensors[f"{prefix}.lora_B.{adapter}.weight"] = torch.randn(linear.out_features, r, generator=g) * 0.3
    tensors["memory_token_embed.weight"] = torch.randn(k + 3, target.hidden_size, generator=g)
    tensors["decoder.lm_head.weight"] = torch.zeros(2, target.hidden_size)  # not ICAE's to keep: ignored
    return tensors


def manual_icae_slots(target, tensors, ids, *, k=K, r=4, alpha=32.0):
    """The ICAE v2 encoder by hand: W x + (alpha / r) B A x on the LoRA'd projections, memory
    tokens appended to the segment, the final-norm states at the last k positions."""
    originals = []
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        path = key.split("icae.base_model.model.")[1].split(".lora_A.")[0]
        module = target.model.get_submodule(path)
        originals.append((module, module.forward))
        module.forward = (lambda f, a, b: lambda x: f(x) + (alpha / r) * (x @ a.T @ b.T))(module.forward, a, b)
    try:
        with torch.no_grad():
            embeds = target.embed(torch.tensor([ids]))
            memory = tensors["memory_token_embed.weight"][:k][None]
            hidden = target.model.model(inputs_embeds=torch.cat([embeds, memory], 1)).last_hidden_state
    finally:
        for module, forward in originals:
            module.forward = forward
    return hidden[0, -k:]


def test_icae_v2_release_converts_to_the_same_slots(tmp_path, tiny_llm_dir):
    reference_llm = load_llm(str(tiny_llm_dir), device="cpu")
    tensors = icae_release(reference_llm)
    source = tmp_path / "mistral_7b_ft_icae.safetensors"
    save_file(tensors, str(source))
    out, notes = convert_icae(source, tmp_path / "ours", llm=str(tiny_llm_dir))
    assert any("decoder.lm_head.weight" in note for note in notes)
    target = load_llm(str(tiny_llm_dir), device="cpu")  # the adapter goes into a fresh LLM
    model = ICAEModel.from_pretrained(out, target).eval()
    c = model.config
    assert (c.k, c.L, c.lora_r, c.lora_alpha, model.trained) == (K, 4 * K, 4, 32.0, True)
    assert c.lora_target_modules == ["q_proj", "v_proj"]
    memory = tensors["memory_token_embed.weight"]
    for i, task in enumerate(("AE", "LM", "FT")):
        torch.testing.assert_close(model.task_embedding(task), memory[K + i])
    ids = reference_llm.tokenizer("The fox waited for the farmer.", add_special_tokens=False)["input_ids"][:12]
    assert len(ids) <= c.L
    with torch.no_grad():
        slots = model.compress([ids])[0]
    expected = manual_icae_slots(reference_llm, tensors, ids)
    torch.testing.assert_close(slots, expected, rtol=1e-4, atol=1e-5)
    # and the LoRA really matters: without it the slots differ
    assert (manual_icae_slots(reference_llm, {"memory_token_embed.weight": memory}, ids) - expected).abs().max() > 1e-3


def test_icae_release_errors(tmp_path, tiny_llm_dir):
    llm = load_llm(str(tiny_llm_dir), device="cpu")
    tensors = icae_release(llm)
    q_proj = "icae.base_model.model.model.layers.0.self_attn.q_proj"
    cases = {
        "no-memory": ({k: v for k, v in tensors.items() if not k.startswith("memory")}, "not an ICAE v2 release"),
        "half-pair": ({k: v for k, v in tensors.items() if "layers.1.self_attn.v_proj.lora_B" not in k}, "not both"),
        "two-adapters": ({**tensors, **{k.replace("default", "other"): v.clone()
                          for k, v in tensors.items() if "lora" in k}},
                         "several LoRA adapters"),
        "ranks": ({**tensors, f"{q_proj}.lora_A.default.weight": torch.zeros(2, H),
                   f"{q_proj}.lora_B.default.weight": torch.zeros(H, 2)}, "ranks differ"),
    }
    for name, (bad, message) in cases.items():
        save_file(bad, str(tmp_path / f"{name}.safetensors"))
        with pytest.raises(ValueError, match=message):
            convert_icae(tmp_path / f"{name}.safetensors", tmp_path / name)
    wide = icae_release(llm)
    wide["memory_token_embed.weight"] = torch.zeros(K + 3, 48)
    save_file(wide, str(tmp_path / "wide.safetensors"))
    with pytest.raises(ValueError, match="does not fit the LLM"):
        convert_icae(tmp_path / "wide.safetensors", tmp_path / "wide", llm=str(tiny_llm_dir))


def test_cli_import_checkpoint_detects_the_format(tmp_path, capsys, tiny_llm_dir):
    weights, params = reference_tensors()
    source = write_reference(tmp_path / "ref", reference_config(), weights, params)
    assert main(["import-checkpoint", str(source), "--out", str(tmp_path / "ic"), "--chunk-size", "16",
                 "--dtype", "float32", "--untrained"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "icformer"
    model = ICFormerModel.from_pretrained(tmp_path / "ic")
    assert model.trained is False and model.config.L == 16
    save_file(icae_release(load_llm(str(tiny_llm_dir), device="cpu")), str(tmp_path / "icae.safetensors"))
    assert main(["import-checkpoint", str(tmp_path / "icae.safetensors"), "--out", str(tmp_path / "ia"),
                 "--chunk-size", "32", "--lora-alpha", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "icae"
    config = json.loads((tmp_path / "ia" / "config.json").read_text())
    assert (config["method"], config["chunk_size"], config["lora_alpha"]) == ("icae", 32, 16.0)
    assert main(["import-checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
