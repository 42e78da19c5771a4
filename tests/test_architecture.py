"""Random-weight stand-ins: an architecture directory (config + tokenizer) is enough to time a model."""

import json
import shutil
import warnings

import pytest
import torch

from icformer import UntrainedWarning
from icformer.architecture import ARCHITECTURES, random_llm, write_architecture
from icformer.cli import main


@pytest.fixture
def arch_dir(tiny_llm_dir, tmp_path):
    """The tiny LLM's directory without its weights."""
    out = tmp_path / "arch"
    shutil.copytree(tiny_llm_dir, out, ignore=shutil.ignore_patterns("*.safetensors"))
    return out


def test_random_llm_has_the_architecture_and_seeded_weights(arch_dir, tiny_target):
    a, b = random_llm(arch_dir, device="cpu"), random_llm(arch_dir, device="cpu")
    other = random_llm(arch_dir, device="cpu", seed=1)
    shapes = lambda t: {n: p.shape for n, p in t.model.state_dict().items()}  # noqa: E731
    assert shapes(a) == shapes(tiny_target)
    assert a.fingerprint == b.fingerprint != other.fingerprint != tiny_target.fingerprint
    assert not any(p.requires_grad for p in a.model.parameters()) and not a.model.training
    assert "random weights" in a.name and a.dtype == torch.float32
    assert a.tokenizer("hello").input_ids == tiny_target.tokenizer("hello").input_ids


def test_random_llm_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an architecture directory"):
        random_llm(tmp_path / "nowhere", device="cpu")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        random_llm(tmp_path, device="cpu")
    with pytest.raises(ValueError, match="unknown architecture"):
        write_architecture("gpt-9", tmp_path)


def test_bench_with_random_weights_uses_the_given_k_and_L(arch_dir, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        args = ["bench", "--random-weights", str(arch_dir), "--num-digest-tokens", "2", "--chunk-size", "8",
                "--lengths", "20", "--batch-sizes", "2", "--repeats", "1", "--out", str(tmp_path)]
        assert main(args) == 0
        assert main(args + ["--llm", str(arch_dir)]) == 2
    assert "drop --llm" in capsys.readouterr().err
    results = json.loads((tmp_path / "bench.json").read_text())
    assert "random weights" in results["meta"]["llm"] and not results["meta"]["icformer_trained"]
    rows = {r["method"]: r for r in results["rows"]}
    assert (rows["icformer"]["k"], rows["icformer"]["L"], rows["icformer"]["num_chunks"]) == (2, 8, 3)
    assert rows["icformer"]["num_vectors"] == 6 and rows["icformer"]["batch_size"] == 2


@pytest.mark.slow
def test_llama_2_7b_architecture_from_the_embedded_tokenizer(tmp_path):
    out = write_architecture("llama-2-7b", tmp_path)
    config = json.loads((out / "config.json").read_text())
    for key, value in ARCHITECTURES["llama-2-7b"].items():
        assert config[key] == value
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with torch.device("meta"):  # count parameters without allocating 7B of them
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out))
    body = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    assert body == pytest.approx(6.48e9, rel=1e-2)  # Llama-2-7B without its 2 x 32000 x 4096 embeddings
    assert len(AutoTokenizer.from_pretrained(out)) == config["vocab_size"]
