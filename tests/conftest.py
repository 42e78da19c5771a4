"""Shared fixtures: a tiny random Llama (built here, no download) behind the real loading code."""

import warnings

import pytest
import torch

from icformer import ContextCompressor, ICFormerConfig, ICFormerModel, UntrainedWarning
from icformer.llm import load_llm

from .tiny import save_tiny_llm

TINY_K, TINY_L = 4, 16


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory):
    return save_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="session")
def tiny_target(tiny_llm_dir):
    return load_llm(str(tiny_llm_dir), device="cpu")


def make_tiny_icformer(target, seed: int = 0, **overrides) -> ICFormerModel:
    torch.manual_seed(seed)
    config = dict(num_digest_tokens=TINY_K, chunk_size=TINY_L, digest_init_std=0.02)
    config.update(overrides)
    return ICFormerModel(ICFormerConfig.for_llm(target.model.config, **config))


@pytest.fixture
def tiny_compressor(tiny_target):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        return ContextCompressor(tiny_target, make_tiny_icformer(tiny_target), max_context_tokens=512)
