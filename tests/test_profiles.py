"""Model profiles: the 'paper' profile pointed at the tiny model, missing files, fallback, CLI."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from icformer import ContextCompressor, UntrainedWarning
from icformer import profiles as prof
from icformer.cli import main
from icformer.compressor import load_profile, load_profile_or_fallback
from icformer.llm import load_llm
from icformer.profiles import (
    Profile,
    ProfileUnavailable,
    list_profiles,
    register_profile,
    unregister_profile,
)

from .conftest import TINY_K, TINY_L, make_tiny_icformer

pytestmark = pytest.mark.filterwarnings("ignore::icformer.compressor.UntrainedWarning")
ENV = ("ICFORMER_PROFILE", "ICFORMER_PAPER_LLM", "ICFORMER_PAPER_CHECKPOINTS")
TEXT = "The keeper climbed the lighthouse stairs each night to light the lamp for the ships."


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(prof, "_in_hf_cache", lambda repo_id: False)  # never the real Llama-2 cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network probe: the hub counts as unreachable


@pytest.fixture
def paper_checkpoints(tmp_path, tiny_target, tiny_llm_dir):
    """A 'paper' checkpoint directory for the tiny LLM: icformer/ and icae/."""
    from icformer.compressors.icae import ICAEConfig, ICAEModel

    root = tmp_path / "paper-checkpoints"
    make_tiny_icformer(tiny_target, seed=3).save_pretrained(root / "icformer", trained=True)
    torch.manual_seed(4)
    fresh = load_llm(str(tiny_llm_dir), device="cpu")  # ICAE injects its adapter: never into the shared one
    ICAEModel(ICAEConfig.for_llm(fresh.model.config, TINY_K, TINY_L, lora_r=4), fresh).save_pretrained(root / "icae")
    return root


@pytest.fixture
def tiny_profile(tiny_llm_dir):
    profile = register_profile(Profile(name="tiny-test", description="the tiny test Llama", llm=str(tiny_llm_dir),
                                       num_digest_tokens=TINY_K, chunk_size=TINY_L, require_checkpoint=False))
    yield profile
    unregister_profile(profile.name)


def test_builtin_profiles_and_their_settings():
    rows = {row["name"]: row for row in list_profiles()}
    assert {"embedded", "paper"} <= set(rows)
    assert rows["embedded"]["default"] and not rows["paper"]["default"]
    paper = rows["paper"]
    assert (paper["k"], paper["L"], paper["llm"]) == (128, 512, "meta-llama/Llama-2-7b-chat-hf")
    assert not paper["available"] and any("ICFORMER_PAPER_CHECKPOINTS" in m for m in paper["missing"])
    assert (rows["embedded"]["k"], rows["embedded"]["L"]) == (32, 128)
    json.dumps(rows)  # plain data for the app


def test_paper_profile_from_environment_points_at_the_tiny_model(
    monkeypatch, tiny_llm_dir, tiny_target, paper_checkpoints
):
    monkeypatch.setenv("ICFORMER_PAPER_LLM", str(tiny_llm_dir))
    monkeypatch.setenv("ICFORMER_PAPER_CHECKPOINTS", str(paper_checkpoints))
    assert prof.check_profile("paper", probe_network=True) == []
    assert {r["name"]: r for r in list_profiles()}["paper"]["available"]
    cc = load_profile("paper", device="cpu", max_context_tokens=512)
    assert cc.target.name == str(tiny_llm_dir) and cc.target.fingerprint == tiny_target.fingerprint
    assert (cc.icformer.config.k, cc.icformer.config.L, cc.icformer.trained) == (TINY_K, TINY_L, True)
    assert cc.methods() == ["icformer", "icae", "full"]
    # the same vectors as the checkpoint loaded by hand
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        by_hand = ContextCompressor(tiny_target, make_tiny_icformer(tiny_target, seed=3), max_context_tokens=512)
    torch.testing.assert_close(cc.compress(TEXT).vectors, by_hand.compress(TEXT).vectors)
    assert cc.compress(TEXT, method="icae").num_vectors == cc.compress(TEXT).num_vectors
    # chosen through the environment, and through the compressor's own constructor
    monkeypatch.setenv("ICFORMER_PROFILE", "paper")
    assert prof.resolve_profile_name() == "paper"
    assert ContextCompressor.from_profile(device="cpu").icformer.config.k == TINY_K
    compressor, warning = load_profile_or_fallback(device="cpu")
    assert warning is None and compressor.target.name == str(tiny_llm_dir)


def test_missing_paper_files_name_what_is_missing_and_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("ICFORMER_PAPER_LLM", str(tmp_path / "no-such-dir"))
    with pytest.raises(ProfileUnavailable) as info:
        load_profile("paper", device="cpu")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)  # the CLI reports it as a clean error
    assert "ICFORMER_PAPER_LLM" in message and "does not exist" in message
    assert "hf download meta-llama/Llama-2-7b-chat-hf" in message and "gated" in message
    assert "ICFORMER_PAPER_CHECKPOINTS is not set" in message and "import-checkpoint" in message
    assert len(info.value.missing) == 2


def test_uncached_hub_llm_without_network_is_missing(monkeypatch, tmp_path, tiny_target):
    make_tiny_icformer(tiny_target).save_pretrained(tmp_path / "icformer")
    monkeypatch.setenv("ICFORMER_PAPER_CHECKPOINTS", str(tmp_path))
    missing = prof.check_profile("paper", probe_network=True)
    assert len(missing) == 1 and "not in the Hugging Face cache" in missing[0] and "ICFORMER_PAPER_LLM" in missing[0]
    assert prof.check_profile("paper") == []  # without probing, an uncached hub id is "will download"
    assert {r["name"]: r for r in list_profiles()}["paper"]["needs_download"]


def test_incomplete_checkpoint_directory_is_missing(monkeypatch, tmp_path, tiny_llm_dir):
    (tmp_path / "icformer").mkdir()
    (tmp_path / "icformer" / "config.json").write_text("{}")
    monkeypatch.setenv("ICFORMER_PAPER_LLM", str(tiny_llm_dir))
    monkeypatch.setenv("ICFORMER_PAPER_CHECKPOINTS", str(tmp_path))
    with pytest.raises(ProfileUnavailable, match="lacks config.json / model.safetensors"):
        load_profile("paper")


def test_fallback_returns_a_working_compressor_and_the_reason(monkeypatch, tiny_profile):
    compressor, warning = load_profile_or_fallback("paper", fallback="tiny-test", device="cpu")
    assert compressor.target.name == tiny_profile.llm
    assert (compressor.icformer.config.k, compressor.icformer.config.L) == (TINY_K, TINY_L)
    assert "'paper' cannot be loaded" in warning and "Using the 'tiny-test' profile instead" in warning
    assert compressor.compress(TEXT).num_vectors % TINY_K == 0
    compressor, warning = load_profile_or_fallback("no-such-profile", fallback="tiny-test", device="cpu")
    assert "unknown profile 'no-such-profile'" in warning
    monkeypatch.setenv("ICFORMER_PROFILE", "tiny-test")
    assert load_profile_or_fallback(fallback="tiny-test", device="cpu")[1] is None


def test_registered_profiles_cannot_shadow_builtins(tiny_profile):
    with pytest.raises(ValueError, match="already exists"):
        register_profile(Profile(name="paper", description="x", llm=None))
    with pytest.raises(ValueError, match="unknown profile"):
        prof.get_profile("nope")


def test_cli_profiles_and_profile_flag(monkeypatch, tmp_path, capsys, tiny_llm_dir, paper_checkpoints):
    assert main(["profiles", "--json"]) == 0
    assert {r["name"] for r in json.loads(capsys.readouterr().out)} >= {"embedded", "paper"}
    assert main(["profiles"]) == 0
    assert "missing:" in capsys.readouterr().out
    story = tmp_path / "story.txt"
    story.write_text(TEXT)
    out = tmp_path / "ctx.safetensors"
    assert main(["compress", str(story), "-o", str(out), "--profile", "paper", "--device", "cpu"]) == 2
    assert "ICFORMER_PAPER_CHECKPOINTS" in capsys.readouterr().err
    monkeypatch.setenv("ICFORMER_PAPER_LLM", str(tiny_llm_dir))
    monkeypatch.setenv("ICFORMER_PAPER_CHECKPOINTS", str(paper_checkpoints))
    assert main(["compress", str(story), "-o", str(out), "--profile", "paper", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["num_vectors"] % TINY_K == 0
    assert main(["compress", str(story), "-o", str(out), "--profile", "paper", "--llm", str(tiny_llm_dir)]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.slow
def test_missing_profile_falls_back_to_the_embedded_model():
    from icformer.llm import EMBEDDED_NAME

    compressor, warning = load_profile_or_fallback("paper", device="cpu")
    assert compressor.target.name == EMBEDDED_NAME
    assert "ICFORMER_PAPER_CHECKPOINTS" in warning and "Using the 'embedded' profile instead" in warning
