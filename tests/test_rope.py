"""RoPE frequencies and angles stay float32 when the compressor runs in a lower precision."""

import warnings

import pytest
import torch

from icformer import ContextCompressor, ICFormerConfig, ICFormerModel, UntrainedWarning

# The paper's shapes: head_dim 128, k=128 digests after a 512-token chunk, so positions reach 639.
HEAD_DIM, K, L = 128, 128, 512


def paper_shaped_model() -> ICFormerModel:
    torch.manual_seed(0)
    return ICFormerModel(ICFormerConfig(hidden_size=2 * HEAD_DIM, num_heads=2, intermediate_size=64,
                                        num_digest_tokens=K, chunk_size=L, num_layers=1))


@pytest.mark.parametrize("cast", [
    lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.to("cpu", torch.float16),
    lambda m: m.double().float(),
], ids=["to-bf16", "half", "to-device-fp16", "double-and-back"])
def test_frequencies_stay_float32_under_any_cast(cast):
    reference = paper_shaped_model().rope.inv_freq.clone()
    model = cast(paper_shaped_model().bfloat16())
    assert model.rope.inv_freq.dtype == torch.float32 and torch.equal(model.rope.inv_freq, reference)


def test_a_float64_model_computes_its_frequencies_in_float64():
    model = paper_shaped_model().double()
    exponents = torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM
    assert torch.equal(model.rope.inv_freq, 1.0 / 10000.0**exponents)


def test_bf16_angles_equal_the_float32_reference_rounded_once():
    model = paper_shaped_model().to(torch.bfloat16)
    positions = torch.arange(L + K)[None]
    exponents = torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM
    angles = positions[..., None].float() * (1.0 / 10000.0**exponents)
    cos, sin = model.rope(positions, torch.bfloat16)
    assert cos.dtype == torch.bfloat16
    assert torch.equal(cos[:, :, 0], angles.cos().bfloat16()) and torch.equal(sin[:, :, 0], angles.sin().bfloat16())


def test_a_bf16_compressor_keeps_float32_frequencies(tiny_llm_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        cc = ContextCompressor.from_pretrained(str(tiny_llm_dir), dtype=torch.bfloat16)
    assert cc.icformer.digest_embeddings.dtype == torch.bfloat16
    assert cc.icformer.rope.inv_freq.dtype == torch.float32
