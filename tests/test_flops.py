"""Compression FLOPs: the paper's anchors, chunking, and analytic == FlopCounterMode on the tiny model."""

import warnings

import pytest
import torch

from icformer import ContextCompressor, ICFormerConfig, UntrainedWarning
from icformer.flops import (
    compression_flops,
    digest_kv_flops,
    icae_flops,
    icformer_flops,
    measure_flops,
    paper_icae_flops,
    paper_icformer_flops,
)

from .conftest import TINY_L, make_tiny_icformer
from .test_icae import make_tiny_icae

LLAMA2_7B = dict(h=4096, m=11008)


def test_paper_anchors_512_to_128_on_llama2_7b():
    icae = paper_icae_flops(b=1, s=512, k=128, layers=32, **LLAMA2_7B)
    icformer = paper_icformer_flops(b=1, s=512, k=128, layers=3, **LLAMA2_7B)
    assert icae == pytest.approx(8.50e12, rel=5e-3)
    assert icformer == pytest.approx(2.62e11, rel=5e-3)
    assert 31 < icae / icformer < 33  # "ratio ~1/32"


def test_chunking_and_batch_scale_linearly_less_the_shared_digest_projections():
    config = ICFormerConfig(hidden_size=576, num_heads=9, intermediate_size=1536, num_digest_tokens=128, chunk_size=512)
    one_chunk = icformer_flops(config, 512)
    assert one_chunk.paper == pytest.approx(5.7e9, rel=0.01)  # docs/machine.md §5, SmolLM2 sizes
    kept = 2 * 128 * 576 * 576 * 2 * 3  # digest k/v projections of 3 layers: kept between calls
    assert digest_kv_flops(config) == kept
    assert one_chunk.exact == one_chunk.paper - kept
    assert icformer_flops(config, 2048).paper == 4 * one_chunk.paper  # 4 chunks of 512
    assert icformer_flops(config, 2048, batch=8).paper == 32 * one_chunk.paper
    first_q = 2 * 128 * 576 * 576  # the first layer's q projection of the digests: once per call
    assert icformer_flops(config, 2048).exact == 4 * one_chunk.exact - 3 * first_q
    assert icformer_flops(config, 2048, batch=8).exact == 32 * one_chunk.exact - 31 * first_q
    assert icformer_flops(config, 100).exact < one_chunk.exact  # a short context is one short chunk


def _tokens(n: int, batch: int) -> list[list[int]]:
    return [[10 + (5 * i + 3 * row) % 300 for i in range(n)] for row in range(batch)]


@pytest.mark.parametrize("n,batch", [(5, 1), (TINY_L, 2), (3 * TINY_L + 1, 1), (34, 3)])
def test_icformer_analytic_equals_flop_counter(tiny_target, n, batch):
    model = make_tiny_icformer(tiny_target).eval().requires_grad_(False)
    contexts = [tiny_target.embed(torch.tensor(ids)) for ids in _tokens(n, batch)]
    with torch.no_grad():
        first, _ = measure_flops(lambda: model.compress(contexts))
        later, _ = measure_flops(lambda: model.compress(contexts))
    exact = icformer_flops(model.config, n, batch).exact
    assert later == exact
    assert first == exact + digest_kv_flops(model.config)  # the first call computes the digest k/v too


@pytest.mark.parametrize("n,batch", [(5, 1), (TINY_L, 2), (3 * TINY_L + 1, 1), (34, 3)])
def test_icae_analytic_equals_flop_counter(tiny_llm_dir, n, batch):
    icae = make_tiny_icae(tiny_llm_dir).requires_grad_(False)
    with torch.no_grad():
        measured, _ = measure_flops(lambda: icae.compress(_tokens(n, batch)))
    flops = icae_flops(icae, n, batch)
    assert measured == flops.exact  # attention, GQA projections and LoRA included; no lm_head
    assert flops.exact != flops.paper  # the tiny Llama has grouped-query attention and LoRA


def test_measured_flops_leave_out_the_lm_head(tiny_llm_dir):
    icae = make_tiny_icae(tiny_llm_dir).requires_grad_(False)
    config = icae.target.model.config
    with torch.no_grad():
        measured, _ = measure_flops(lambda: icae.compress(_tokens(TINY_L, 1)))
        embeds = torch.cat([icae.target.embed(torch.tensor(_tokens(TINY_L, 1)[0])), icae.memory_embeddings])[None]
        with icae._adapter(True):
            with_logits, _ = measure_flops(lambda: icae.target.model(inputs_embeds=embeds))
    positions = TINY_L + icae.config.num_digest_tokens
    assert with_logits - measured == 2 * positions * config.hidden_size * config.vocab_size


def test_compression_flops_for_a_compressor(tiny_llm_dir):
    icae = make_tiny_icae(tiny_llm_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        cc = ContextCompressor(icae.target, make_tiny_icformer(icae.target), icae)
    assert compression_flops(cc, "icformer", 40) == icformer_flops(cc.icformer.config, 40).exact
    assert compression_flops(cc, "icae", 40, batch_size=2) == icae_flops(icae, 40, 2).exact
    assert compression_flops(cc, "full", 40) == 0
    with pytest.raises(ValueError, match="unknown method"):
        compression_flops(cc, "zip", 40)


def test_attention_flops_count_every_query_head_under_grouped_query_attention():
    """CUDA kernels take 3 K/V heads for 9 query heads (SmolLM2); each query head still scores all keys."""
    from torch.utils.flop_counter import sdpa_flop_count

    from icformer.flops import _EXTRA_FORMULAS

    expanded = sdpa_flop_count((2, 9, 10, 64), (2, 9, 12, 64), (2, 9, 12, 64))
    for op in (torch.ops.aten._scaled_dot_product_efficient_attention,
               torch.ops.aten._scaled_dot_product_flash_attention):
        assert _EXTRA_FORMULAS[op]((2, 9, 10, 64), (2, 3, 12, 64), (2, 3, 12, 64)) == expanded
    q, k = torch.randn(2, 9, 10, 64), torch.randn(2, 3, 12, 64)
    with torch.no_grad():
        measured, _ = measure_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k, enable_gqa=True))
    assert measured == expanded
