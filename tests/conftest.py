"""Shared fixtures: a tiny random Llama (built here, no download) behind the real loading code."""

import json
import warnings

import pytest
import torch

from icformer import ContextCompressor, ICFormerConfig, ICFormerModel, UntrainedWarning
from icformer.llm import load_llm
from icformer.train import TrainConfig

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


TRAIN_PROSE = [
    "It was a bright cold day in spring, and the clocks in the old tower were striking nine.",
    "The river ran slowly past the mill, carrying leaves and small branches toward the sea.",
    "A lamp burned in the window of the inn, and travellers stopped to warm their hands.",
    "The fox waited at the edge of the field until the farmer had gone back inside.",
]


@pytest.fixture
def train_data(tmp_path):
    """Four made-up sentences as pre-training and instruction splits."""
    d = tmp_path / "data"
    d.mkdir()
    write = lambda name, rows: (d / name).write_text("".join(json.dumps(r) + "\n" for r in rows))  # noqa: E731
    write("pretrain_train.jsonl", [{"id": str(i), "text": t} for i, t in enumerate(TRAIN_PROSE[:3])])
    write("pretrain_valid.jsonl", [{"id": f"v{i}", "text": t} for i, t in enumerate(TRAIN_PROSE[2:4])])
    qa = [{"input": t, "prompt": "Where?", "answer": t.split()[-1]} for t in TRAIN_PROSE]
    write("instruct_train.jsonl", qa[:3])
    write("instruct_test.jsonl", qa[2:])
    return d


def tiny_train_config(tmp_path, data_dir, **overrides) -> TrainConfig:
    """A training run on the tiny Llama that finishes in about a second; fp32, so it computes the same
    on every CPU ("auto" picks bf16 where the CPU has fast bf16 matmuls)."""
    values = dict(data_dir=str(data_dir), out_dir=str(tmp_path / "run"), num_digest_tokens=4, chunk_size=16,
                  lr=3e-3, batch_size=2, grad_accum=2, max_steps=4, eval_every=2, eval_samples=2, save_every=2,
                  digest_init_std=0.02, mixed_precision="no")
    values.update(overrides)
    return TrainConfig(**values)
