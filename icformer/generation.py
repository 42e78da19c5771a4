"""Decode from a soft prompt with transformers' `generate`, timing prefill and decode apart."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from .timing import now, peak_memory_bytes, reset_peak_memory


@dataclass
class Answer:
    """Generated text with its timing breakdown (seconds) and memory."""

    text: str
    token_ids: list[int]
    method: str
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    memory_kind: str = ""  # "cuda_peak" or "cpu_rss"
    trained: bool = False
    prompt_positions: int = 0  # positions the LLM prefilled (vectors + template tokens)
    device: str = "cpu"


class _StepClock(LogitsProcessor):
    """Called once per generated token; its first call marks the end of the prefill."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.stamps = device, []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.stamps.append(now(self.device))
        return scores


@dataclass(frozen=True)
class SamplingOptions:
    max_new_tokens: int = 256
    do_sample: bool = False  # greedy by default, as in the paper's evaluation
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int | None = None

    def generation_config(self, stop_ids: list[int], pad_id: int) -> GenerationConfig:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        sampling: dict[str, Any] = {}
        if self.do_sample:
            if self.temperature <= 0:
                raise ValueError(f"temperature must be positive when sampling, got {self.temperature}")
            sampling = dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
            **sampling,
        )


@torch.no_grad()
def generate_from_embeds(
    model,
    tokenizer,
    inputs_embeds: torch.Tensor,  # [T, hidden]
    options: SamplingOptions,
    stop_ids: list[int],
    streamer: Any | None = None,
) -> tuple[list[int], dict[str, float], int]:
    """Return (new token ids without the stop token, timings, peak memory in bytes)."""
    device = inputs_embeds.device
    if options.seed is not None:
        torch.manual_seed(options.seed)
    clock = _StepClock(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    reset_peak_memory(device)
    start = now(device)
    out = model.generate(
        inputs_embeds=inputs_embeds[None].to(model.dtype),
        attention_mask=torch.ones(1, inputs_embeds.shape[0], dtype=torch.long, device=device),
        generation_config=options.generation_config(stop_ids, pad_id),
        logits_processor=LogitsProcessorList([clock]),
        streamer=streamer,
    )
    end = now(device)
    ids = out[0].tolist()
    while ids and ids[-1] in stop_ids + [pad_id]:
        ids.pop()
    prefill = (clock.stamps[0] if clock.stamps else end) - start
    decode = end - start - prefill
    steps = max(len(clock.stamps) - 1, 0)
    timings = {
        "prefill_s": prefill,
        "decode_s": decode,
        "new_tokens": float(len(ids)),
        "tokens_per_s": steps / decode if decode > 0 and steps else 0.0,
    }
    return ids, timings, peak_memory_bytes(device)

