"""ContextCompressor end to end on the tiny Llama: compress -> answer / reconstruct, save/load, errors."""

import dataclasses
import warnings

import pytest
import torch

from icformer import CompressedContext, ContextCompressor, UntrainedWarning

from .conftest import TINY_K, TINY_L, make_tiny_icformer

TEXT = "The letter was written by Anna in the spring. She sent it to her brother in Lyon."


def test_compress_gives_k_vectors_per_chunk_and_full_metadata(tiny_compressor, tiny_target):
    z = tiny_compressor.compress(TEXT)
    n = len(tiny_compressor.tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    chunks = -(-n // TINY_L)
    assert z.num_tokens == n and z.vectors.shape == (chunks * TINY_K, tiny_target.hidden_size)
    meta = z.metadata
    for key in ("method", "llm", "llm_hash", "hidden_size", "k", "L", "num_chunks", "num_tokens", "version"):
        assert key in meta
    assert (meta["method"], meta["k"], meta["L"], meta["num_chunks"]) == ("icformer", TINY_K, TINY_L, chunks)
    assert meta["llm_hash"] == tiny_target.fingerprint
    assert z.timings["compress_s"] > 0 and z.trained is False


def test_batched_compress_matches_single(tiny_compressor):
    texts = [TEXT, "Short one.", TEXT * 3]
    batch = tiny_compressor.compress(texts)
    for text, z in zip(texts, batch):
        alone = tiny_compressor.compress(text)
        assert torch.allclose(z.vectors, alone.vectors, atol=1e-5)


def test_full_method_keeps_the_token_embeddings(tiny_compressor):
    z = tiny_compressor.compress(TEXT, method="full")
    assert z.num_vectors == z.num_tokens and z.metadata["k"] is None


def test_save_load_round_trip_is_bit_exact(tiny_compressor, tmp_path):
    z = tiny_compressor.compress(TEXT)
    z.save(tmp_path / "ctx.safetensors")
    z2 = CompressedContext.load(tmp_path / "ctx.safetensors")
    assert torch.equal(z.vectors, z2.vectors) and z.metadata == z2.metadata and z.timings == z2.timings
    a1 = tiny_compressor.answer(z, "Who wrote it?", max_new_tokens=5)
    a2 = tiny_compressor.answer(z2, "Who wrote it?", max_new_tokens=5)
    assert a1.token_ids == a2.token_ids


@pytest.mark.parametrize("method", ["icformer", "full"])
def test_answer_carries_text_and_timing_breakdown(tiny_compressor, method):
    a = tiny_compressor.answer(TEXT, "Who wrote the letter?", method=method, max_new_tokens=6)
    assert isinstance(a.text, str) and 0 < len(a.token_ids) <= 6
    for key in ("compress_s", "prefill_s", "decode_s", "total_s", "new_tokens", "tokens_per_s"):
        assert key in a.timings
    assert a.timings["prefill_s"] > 0 and a.timings["total_s"] >= a.timings["prefill_s"]
    assert a.method == method and a.peak_memory_bytes > 0
    assert a.trained is (method == "full")


def test_greedy_is_deterministic_and_sampling_is_an_option(tiny_compressor):
    z = tiny_compressor.compress(TEXT)
    first = tiny_compressor.answer(z, "Who?", max_new_tokens=8)
    assert first.token_ids == tiny_compressor.answer(z, "Who?", max_new_tokens=8).token_ids
    s1 = tiny_compressor.answer(z, "Who?", max_new_tokens=8, do_sample=True, temperature=5.0, seed=1)
    s2 = tiny_compressor.answer(z, "Who?", max_new_tokens=8, do_sample=True, temperature=5.0, seed=1)
    assert s1.token_ids == s2.token_ids


def _bigrams(ids: list[int]) -> list[tuple[int, int]]:
    return list(zip(ids, ids[1:]))


def test_no_repeat_ngram_stops_the_loops_of_greedy_decoding(tiny_compressor):
    """The random tiny model loops; with the block, greedy decoding is the same until its first repeated
    bigram would be completed, and no bigram comes twice after that."""
    z = tiny_compressor.compress(TEXT)
    plain = tiny_compressor.reconstruct(z, max_new_tokens=40).token_ids
    pairs = _bigrams(plain)
    first_repeat = next(i for i, pair in enumerate(pairs) if pair in pairs[:i])  # the loop the block must stop
    blocked = tiny_compressor.reconstruct(z, max_new_tokens=40, no_repeat_ngram=2).token_ids
    assert blocked[: first_repeat + 1] == plain[: first_repeat + 1] and blocked[first_repeat + 1] != plain[first_repeat + 1]
    assert len(set(_bigrams(blocked))) == len(blocked) - 1
    with pytest.raises(ValueError, match="no_repeat_ngram"):
        tiny_compressor.answer(z, "Who?", no_repeat_ngram=-1)


def test_generation_stops_at_a_stop_token(tiny_compressor, monkeypatch):
    z = tiny_compressor.compress(TEXT)
    free = tiny_compressor.answer(z, "Who?", max_new_tokens=6).token_ids
    stop = free[2]  # pretend the third greedy token is EOS: decoding must end right before it
    monkeypatch.setattr("icformer.compressor.stop_token_ids", lambda tokenizer: [stop])
    stopped = tiny_compressor.answer(z, "Who?", max_new_tokens=6)
    assert stopped.token_ids == free[: free.index(stop)]
    assert stopped.timings["new_tokens"] == len(stopped.token_ids)


def test_reconstruct_defaults_to_context_length_budget(tiny_compressor):
    z = tiny_compressor.compress(TEXT)
    r = tiny_compressor.reconstruct(z, max_new_tokens=4)
    assert len(r.token_ids) <= 4 and r.method == "icformer"
    with pytest.raises(ValueError, match="nothing to reconstruct"):
        tiny_compressor.reconstruct(TEXT, method="full")


@pytest.mark.parametrize("bad", ["", "   \n\t ", "\x00\x01\x02", b"\x00\x07"])
def test_empty_context_is_a_clear_error(tiny_compressor, bad):
    with pytest.raises(ValueError, match="context is empty"):
        tiny_compressor.compress(bad)


@pytest.mark.parametrize("bad", ["", "  \n"])
def test_empty_question_is_a_clear_error(tiny_compressor, bad):
    with pytest.raises(ValueError, match="question is empty"):
        tiny_compressor.answer(TEXT, bad)


def test_control_characters_and_invalid_utf8_are_cleaned(tiny_compressor):
    z = tiny_compressor.compress(b"Caf\xc3\xa9 \xff\xfe broken \x00\x1b[31m bytes")
    assert z.num_tokens > 0
    clean = tiny_compressor.compress("Hello\x00 world\x07")
    assert clean.num_tokens == tiny_compressor.compress("Hello world").num_tokens


def test_over_long_context_is_refused_before_tokenising(tiny_compressor, monkeypatch):
    calls = []
    original = type(tiny_compressor.tokenizer).__call__
    monkeypatch.setattr(type(tiny_compressor.tokenizer), "__call__", lambda *a, **k: calls.append(1) or original(*a, **k))
    with pytest.raises(ValueError, match="too long"):
        tiny_compressor.compress("word " * 10_000_000)
    assert calls == [], "a huge paste must be refused before tokenisation"
    with pytest.raises(ValueError, match="too long: .* tokens"):
        tiny_compressor.compress("word " * 600)  # limit is 512 tokens in the fixture


def test_hidden_size_mismatch_names_both_sizes(tiny_target):
    from icformer import ICFormerConfig, ICFormerModel

    wrong = ICFormerModel(ICFormerConfig(hidden_size=64, num_heads=4, intermediate_size=64, num_digest_tokens=2, chunk_size=8))
    with pytest.raises(ValueError, match=f"hidden size 64.*hidden size {tiny_target.hidden_size}"):
        ContextCompressor(tiny_target, wrong)


def test_context_from_another_llm_is_refused(tiny_compressor):
    z = tiny_compressor.compress(TEXT)
    foreign = dataclasses.replace(z, metadata={**z.metadata, "llm": "other-llm", "llm_hash": "f" * 64})
    with pytest.raises(ValueError, match="compressed for LLM 'other-llm'") as refused:
        tiny_compressor.answer(foreign, "Who?")
    assert "weights in" not in str(refused.value)
    assert z.metadata["llm_dtype"] == "float32"
    other_dtype = dataclasses.replace(z, metadata={**z.metadata, "llm_hash": "f" * 64, "llm_dtype": "bfloat16"})
    with pytest.raises(ValueError, match="compressed with the weights in bfloat16, this LLM runs in float32"):
        tiny_compressor.answer(other_dtype, "Who?")


def test_untrained_compressor_warns_and_is_marked(tiny_target):
    with pytest.warns(UntrainedWarning, match="not trained"):
        cc = ContextCompressor(tiny_target, make_tiny_icformer(tiny_target))
    assert cc.compress(TEXT).trained is False


def test_trained_checkpoint_is_reported_trained(tiny_target, tmp_path):
    model = make_tiny_icformer(tiny_target)
    model.save_pretrained(tmp_path / "ckpt", trained=True)
    from icformer import ICFormerModel

    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedWarning)
        cc = ContextCompressor(tiny_target, ICFormerModel.from_pretrained(tmp_path / "ckpt"))
    z = cc.compress(TEXT)
    assert z.trained is True and cc.answer(z, "Who?", max_new_tokens=2).trained is True


def test_unknown_or_missing_method_is_a_clear_error(tiny_compressor):
    with pytest.raises(ValueError, match="unknown method"):
        tiny_compressor.compress(TEXT, method="zip")
    with pytest.raises(ValueError, match="no ICAE model"):
        tiny_compressor.compress(TEXT, method="icae")


def test_cli_compress_then_answer(tiny_llm_dir, tmp_path, capsys):
    from icformer.cli import main

    (tmp_path / "ctx.txt").write_text(TEXT)
    out = tmp_path / "ctx.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        assert main(["compress", str(tmp_path / "ctx.txt"), "-o", str(out), "--llm", str(tiny_llm_dir)]) == 0
        assert out.is_file()
        assert main(["answer", str(out), "Who?", "--llm", str(tiny_llm_dir), "--max-new-tokens", "3"]) == 0
        assert main(["reconstruct", str(out), "--llm", str(tiny_llm_dir), "--max-new-tokens", "3",
                     "--no-repeat-ngram", "2"]) == 0
        (tmp_path / "empty.txt").write_text("  ")
        assert main(["compress", str(tmp_path / "empty.txt"), "-o", str(out), "--llm", str(tiny_llm_dir)]) == 2
    assert "context is empty" in capsys.readouterr().err
