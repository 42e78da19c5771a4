"""ICAE baseline on the tiny Llama: slots, batching, the shared adapter's switch, persistence, training."""

import json
import warnings

import pytest
import torch

from icformer import ContextCompressor, UntrainedWarning
from icformer.compressors.icae import ICAEConfig, ICAEModel
from icformer.llm import load_llm

from .conftest import TINY_K, TINY_L, make_tiny_icformer

TEXT = "The letter was written by Anna in the spring. She sent it to her brother in Lyon."


def make_tiny_icae(llm_dir, seed: int = 0, lora_b_std: float = 0.0, **overrides) -> ICAEModel:
    """A tiny ICAE on a freshly loaded tiny LLM (one ICAE adapter per LLM).

    peft starts LoRA B at zero (the adapter is then a no-op); `lora_b_std` > 0 makes it act.
    """
    target = load_llm(str(llm_dir), device="cpu")
    torch.manual_seed(seed)
    config = ICAEConfig.for_llm(target.model.config, TINY_K, TINY_L, **{"lora_r": 8, **overrides})
    icae = ICAEModel(config, target)
    if lora_b_std:
        for pair in icae.lora.values():
            torch.nn.init.normal_(pair["B"].weight, std=lora_b_std)
    return icae.eval()


@pytest.fixture
def icae(tiny_llm_dir):
    return make_tiny_icae(tiny_llm_dir, lora_b_std=0.5)


def ids(n: int, offset: int = 10) -> list[int]:
    return [offset + (7 * i) % 300 for i in range(n)]


@torch.no_grad()
def test_k_slots_per_segment(icae):
    h = icae.config.hidden_size
    short, exact, long = icae.compress([ids(5), ids(TINY_L), ids(3 * TINY_L + 1)])
    assert short.shape == exact.shape == (TINY_K, h)
    assert long.shape == (4 * TINY_K, h)


@torch.no_grad()
def test_batched_equals_one_at_a_time(icae):
    contexts = [ids(5), ids(3 * TINY_L + 1, offset=20), ids(TINY_L), ids(23, offset=40)]
    batched = icae.compress(contexts)
    for context, slots in zip(contexts, batched):
        assert torch.allclose(slots, icae.compress([context])[0], atol=1e-5)
        assert torch.isfinite(slots).all()


@torch.no_grad()
def test_slots_are_the_final_norm_states_at_the_memory_positions(icae):
    target, context = icae.target, ids(9)
    captured = {}
    hook = target.model.lm_head.register_forward_hook(lambda m, args, out: captured.setdefault("x", args[0]))
    inputs = torch.cat([target.embed(torch.tensor(context)), icae.memory_embeddings])[None]
    with icae._adapter(True):
        target.model(inputs_embeds=inputs)
    hook.remove()
    assert torch.allclose(icae.compress([context])[0], captured["x"][0, -TINY_K:], atol=1e-5)


@torch.no_grad()
def test_decoding_with_the_adapter_off_is_the_plain_llm(tiny_llm_dir):
    plain = load_llm(str(tiny_llm_dir), device="cpu").model
    icae = make_tiny_icae(tiny_llm_dir, lora_b_std=0.5)  # non-zero B: the adapter would change outputs
    x = torch.tensor([ids(12)])
    reference = plain(x).logits
    assert torch.equal(icae.target.model(x).logits, reference), "the adapter must be off by default"
    with icae.adapter_disabled():
        assert torch.equal(icae.target.model(x).logits, reference)
    with icae._adapter(True):
        assert not torch.allclose(icae.target.model(x).logits, reference, atol=1e-3)
    icae.compress([ids(12)])
    assert torch.equal(icae.target.model(x).logits, reference), "compress must switch the adapter off again"


@torch.no_grad()
def test_the_enabled_adapter_changes_the_slots(tiny_llm_dir):
    inert = make_tiny_icae(tiny_llm_dir, lora_b_std=0.0)  # peft's init: B = 0
    active = make_tiny_icae(tiny_llm_dir, lora_b_std=0.5)  # same seed: same memory tokens and LoRA A
    assert torch.equal(inert.memory_embeddings, active.memory_embeddings)
    assert not torch.allclose(inert.compress([ids(9)])[0], active.compress([ids(9)])[0], atol=1e-3)


def test_only_adapter_memory_and_task_vectors_train(icae):
    llm_params = {id(p) for p in icae.target.model.parameters()}
    trainable = icae.trainable_parameters()
    lora = [p for p in icae.lora.parameters()]
    h, k = icae.config.hidden_size, icae.config.num_digest_tokens
    assert sum(p.numel() for p in trainable) == k * h + 3 * h + sum(p.numel() for p in lora)
    assert all(id(p) in llm_params for p in lora), "the LoRA weights live inside the shared LLM"
    frozen = [p for p in icae.target.model.parameters() if id(p) not in {id(q) for q in lora}]
    assert not any(p.requires_grad for p in frozen)
    assert sorted(icae.task_embeddings) == ["AE", "FT", "LM"]
    with pytest.raises(KeyError, match="no task vector"):
        icae.task_embedding("QA")


def test_gradients_reach_lora_and_memory_through_adapter_free_decoding(icae):
    icae.train()
    slots = icae.compress([ids(20)])[0]
    with icae.adapter_disabled():  # the decoder pass must not cut the encoder's gradients
        hidden = icae.target.model.base_model(inputs_embeds=slots[None]).last_hidden_state
    hidden.square().mean().backward()
    assert icae.memory_embeddings.grad is not None and icae.memory_embeddings.grad.abs().sum() > 0
    for pair in icae.lora.values():
        assert pair["A"].weight.grad is not None and pair["B"].weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in icae.target.model.named_parameters() if "lora_" not in n)


def test_save_load_round_trip_is_bit_exact(icae, tiny_llm_dir, tmp_path):
    icae.save_pretrained(tmp_path / "icae", trained=True, step=7)
    config = json.loads((tmp_path / "icae" / "config.json").read_text())
    assert config["method"] == "icae" and config["num_digest_tokens"] == TINY_K and config["lora_r"] == 8
    loaded = ICAEModel.from_pretrained(tmp_path / "icae", load_llm(str(tiny_llm_dir), device="cpu")).eval()
    assert loaded.trained is True and icae.trained is False
    original, restored = icae.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[key], restored[key]) for key in original)
    with torch.no_grad():
        assert torch.equal(icae.compress([ids(40)])[0], loaded.compress([ids(40)])[0])


def test_hidden_size_mismatch_names_both_sizes(icae, tiny_target, tmp_path):
    icae.save_pretrained(tmp_path / "icae")
    config = json.loads((tmp_path / "icae" / "config.json").read_text())
    (tmp_path / "icae" / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    with pytest.raises(ValueError, match=f"hidden size 64.*hidden size {tiny_target.hidden_size}"):
        ICAEModel.from_pretrained(tmp_path / "icae", tiny_target)


def test_other_checkpoints_and_a_second_adapter_are_refused(icae, tiny_target, tmp_path):
    make_tiny_icformer(tiny_target).save_pretrained(tmp_path / "icformer")
    with pytest.raises(ValueError, match="not 'icae'"):
        ICAEModel.from_pretrained(tmp_path / "icformer", tiny_target)
    with pytest.raises(FileNotFoundError, match="not an ICAE checkpoint"):
        ICAEModel.from_pretrained(tmp_path / "missing", tiny_target)
    with pytest.raises(ValueError, match="already carries an ICAE adapter"):
        ICAEModel(icae.config, icae.target)


def test_compressor_answers_and_reconstructs_with_icae(tiny_llm_dir):
    icae = make_tiny_icae(tiny_llm_dir, lora_b_std=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        cc = ContextCompressor(icae.target, make_tiny_icformer(icae.target), icae, max_context_tokens=512)
    assert cc.methods() == ["icformer", "icae", "full"]
    z = cc.compress(TEXT, method="icae")
    n = len(cc.tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    assert z.method == "icae" and z.vectors.shape == (-(-n // TINY_L) * TINY_K, cc.target.hidden_size)
    assert (z.metadata["k"], z.metadata["L"], z.trained) == (TINY_K, TINY_L, False)
    answer = cc.answer(z, "Who wrote the letter?", max_new_tokens=5)
    again = cc.answer(z, "Who wrote the letter?", max_new_tokens=5)
    assert answer.method == "icae" and 0 < len(answer.token_ids) <= 5 and answer.token_ids == again.token_ids
    reconstruction = cc.reconstruct(z, max_new_tokens=4)
    assert reconstruction.method == "icae" and len(reconstruction.token_ids) <= 4
    assert all(layer.disable_adapters for _, layer in icae._lora_layers), "the adapter is off after decoding"


def test_from_pretrained_builds_a_seeded_random_icae(tiny_llm_dir):
    with pytest.warns(UntrainedWarning) as caught:
        first = ContextCompressor.from_pretrained(str(tiny_llm_dir), icae=True, device="cpu")
    assert any("icae compressor" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        second = ContextCompressor.from_pretrained(str(tiny_llm_dir), icae=True, device="cpu")
        without = ContextCompressor.from_pretrained(str(tiny_llm_dir), device="cpu")
    assert torch.equal(first.icae.memory_embeddings, second.icae.memory_embeddings)
    assert first.icae.trained is False and first.compress(TEXT, method="icae").trained is False
    assert (first.icae.config.k, first.icae.config.L) == (first.icformer.config.k, first.icformer.config.L)
    assert without.icae is None and "icae" not in without.methods()
