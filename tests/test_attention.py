import json

import pytest
import torch

from icformer.attention import analyse, band_statistics, digest_attention
from icformer.cli import main

from .conftest import TINY_K, TINY_L, make_tiny_icformer


def band(k: int, n: int, width: int) -> torch.Tensor:
    """Digest i attends only to context tokens i*width .. i*width+width-1."""
    weights = torch.zeros(k, n + k)
    for i in range(k):
        weights[i, i * width : (i + 1) * width] = 1.0 / width
    return weights


def test_a_perfect_diagonal_band_scores_one():
    stats = band_statistics(band(8, 32, 4), num_context=32, window=4)
    assert stats.order_correlation == pytest.approx(1.0)
    assert stats.in_order == 1.0 and stats.window_mass == pytest.approx(1.0) and stats.context_mass == pytest.approx(1.0)
    assert stats.uniform_window_mass == pytest.approx(4 / 32)


def test_uniform_attention_has_no_band_and_reversed_order_is_negative():
    k, n = 8, 32
    uniform = torch.full((k, n + k), 1.0 / (n + k))
    stats = band_statistics(uniform, num_context=n, window=4)
    assert stats.order_correlation == 0.0 and stats.in_order == 0.0
    assert stats.window_mass == pytest.approx(stats.uniform_window_mass)
    assert stats.context_mass == pytest.approx(n / (n + k))
    backwards = band_statistics(band(k, n, 4).flip(0), num_context=n, window=4)
    assert backwards.order_correlation == pytest.approx(-1.0) and backwards.in_order == 0.0


def test_digest_attention_is_per_layer_over_context_and_digests(tiny_target):
    model = make_tiny_icformer(tiny_target).eval()
    chunk = torch.randn(TINY_L - 3, model.config.hidden_size)
    maps = digest_attention(model, chunk)
    assert maps.shape == (model.config.num_layers, TINY_K, TINY_L - 3 + TINY_K)
    torch.testing.assert_close(maps.sum(-1), torch.ones(model.config.num_layers, TINY_K))
    assert torch.all(maps[:, 0, TINY_L - 3 + 1 :] == 0)  # causal among digests: the first sees only itself
    with pytest.raises(ValueError, match="more than one chunk"):
        digest_attention(model, torch.randn(TINY_L + 1, model.config.hidden_size))


def test_analyse_averages_over_chunks(tiny_target):
    model = make_tiny_icformer(tiny_target).eval()
    a, b = torch.randn(TINY_L, model.config.hidden_size), torch.randn(9, model.config.hidden_size)
    one, other, both = analyse(model, [a]), analyse(model, [b]), analyse(model, [a, b])
    assert len(both) == model.config.num_layers
    for x, y, mean in zip(one, other, both):
        assert mean.window_mass == pytest.approx((x.window_mass + y.window_mass) / 2)
    with pytest.raises(ValueError, match="no chunks"):
        analyse(model, [])


def test_cli_compares_checkpoints(tiny_target, tiny_llm_dir, tmp_path, capsys):
    for name, seed in (("first", 0), ("second", 1)):
        make_tiny_icformer(tiny_target, seed=seed).save_pretrained(tmp_path / name)
    text = tmp_path / "context.txt"
    text.write_text("The river ran slowly past the mill, carrying leaves toward the sea.")
    args = ["attention", str(tmp_path / "first"), str(tmp_path / "second"), "--texts", str(text),
            "--llm", str(tiny_llm_dir), "--json"]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert list(results) == ["first", "second"]
    assert results["first"]["layers"] != results["second"]["layers"]  # different weights, different maps
    assert main(args[:-1]) == 0
    assert "order_corr" in capsys.readouterr().out


def test_context_attention_reads_the_first_chunk_the_compressor_sees(tiny_compressor):
    from icformer.attention import context_attention

    text = "The river ran slowly past the mill, carrying leaves and small branches toward the sea. " * 3
    report = context_attention(tiny_compressor, text)
    ids = tiny_compressor.tokenize(text)[:TINY_L]
    assert report.tokens == [tiny_compressor.tokenizer.decode([i]) for i in ids]
    assert report.weights.shape == (tiny_compressor.icformer.config.num_layers, TINY_K, TINY_L + TINY_K)
    assert len(report.layers) == tiny_compressor.icformer.config.num_layers and report.trained is False
    with pytest.raises(ValueError):
        context_attention(tiny_compressor, "   ")
