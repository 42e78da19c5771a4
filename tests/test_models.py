"""The one way to build: compressors.load_model / new_model by method name, CompressorSpec -> build_compressor."""

from __future__ import annotations

import pytest
import torch

from icformer import CompressorSpec, build_compressor
from icformer.compressors.checkpoint import CONFIG_NAME, load_checkpoint
from icformer.compressor import encode
from icformer.llm import load_llm
from icformer.compressors import load_model, new_model

from .conftest import TINY_K, TINY_L

pytestmark = pytest.mark.filterwarnings("ignore::icformer.compressor.UntrainedWarning")


def test_a_seed_names_the_weights_and_both_methods_take_the_same_inputs(tiny_target):
    a, b = (new_model("icformer", tiny_target, seed=3, num_digest_tokens=TINY_K, chunk_size=TINY_L) for _ in "ab")
    other = new_model("icformer", tiny_target, seed=4, num_digest_tokens=TINY_K, chunk_size=TINY_L)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), other.parameters()))
    ids = [list(range(5, 5 + TINY_L + 3))]  # two chunks
    with torch.no_grad():
        vectors = encode(a, tiny_target, ids)
    assert vectors[0].shape == (2 * TINY_K, tiny_target.hidden_size)


def test_load_model_refuses_another_method_and_a_folder_that_is_no_checkpoint(tiny_target, tmp_path):
    model = new_model("icformer", tiny_target, num_digest_tokens=TINY_K, chunk_size=TINY_L)
    model.save_pretrained(tmp_path / "icf", trained=True, run="test")
    loaded = load_model(tmp_path / "icf", tiny_target)  # the method is read from the checkpoint
    assert loaded.method == "icformer" and loaded.trained and loaded.source_dir == tmp_path / "icf"
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ValueError, match="holds a 'icformer' checkpoint, not 'icae'"):
        load_model(tmp_path / "icf", tiny_target, "icae")
    with pytest.raises(FileNotFoundError, match="not an ICAE checkpoint"):
        load_model(tmp_path / "nothing", tiny_target, "icae")
    with pytest.raises(ValueError, match="unknown compressor 'lingua'"):
        new_model("lingua", tiny_target)


def test_both_compressors_write_the_same_checkpoint_format(tiny_llm_dir, tmp_path):
    target = load_llm(str(tiny_llm_dir), device="cpu")  # ICAE injects its adapter: a fresh LLM of its own
    icae = new_model("icae", target, num_digest_tokens=TINY_K, chunk_size=TINY_L, lora_r=2)
    icae.save_pretrained(tmp_path / "icae", trained=False)
    checkpoint = load_checkpoint(tmp_path / "icae", "icae")
    assert (tmp_path / "icae" / CONFIG_NAME).is_file() and checkpoint.method == "icae" and not checkpoint.trained
    assert checkpoint.config["lora_r"] == 2 and set(checkpoint.state_dict) == set(icae.state_dict())


def test_build_compressor_from_a_spec(tiny_llm_dir, tmp_path):
    spec = CompressorSpec(llm=str(tiny_llm_dir), icae=True, device="cpu", seed=1, num_digest_tokens=TINY_K,
                          chunk_size=TINY_L)
    cc = build_compressor(spec, max_context_tokens=64)
    assert cc.methods() == ["icformer", "icae", "full"] and cc.max_context_tokens == 64
    assert (cc.icformer.config.k, cc.icae.config.k) == (TINY_K, TINY_K) and not cc.icformer.trained
    cc.icformer.save_pretrained(tmp_path / "icf", trained=True)
    again = build_compressor(CompressorSpec(llm=str(tiny_llm_dir), icformer=tmp_path / "icf", device="cpu"),
                             target=cc.target)  # an LLM already loaded is reused, not loaded again
    assert again.target is cc.target and again.icae is None and again.icformer.trained
    assert torch.equal(again.compress("a short context").vectors, cc.compress("a short context").vectors)
