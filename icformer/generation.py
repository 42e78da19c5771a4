"""Decode from a soft prompt one token at a time, timing prefill and decode apart.

`stream_from_embeds` is a generator: each `next()` runs exactly one forward pass of the LLM
and yields the text so far. A caller that shares one model between several requests can
therefore take turns at token granularity (the app does: a short request never waits behind
a whole long decode), and stops a decode by no longer iterating. `generate_from_embeds` runs
the same loop to the end.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import (
    NoRepeatNGramLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
)

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
    done: bool = True  # False: a step of a stream, the decode still running (or stopped by its caller)


# The n-gram block wherever the project offers one (app box, evaluation, model cards): 4 did no better
# (docs/learning.md, "Greedy decoding loops").
NO_REPEAT_NGRAM = 3


@dataclass(frozen=True)
class SamplingOptions:
    max_new_tokens: int = 256
    do_sample: bool = False  # greedy by default, as in the paper's evaluation
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int | None = None
    # 0: off (the paper's decoding). n: no n-gram of the new text appears twice, as `generate`'s
    # no_repeat_ngram_size: an undertrained compressor's reconstructions otherwise loop on a phrase.
    no_repeat_ngram: int = 0

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be positive when sampling, got {self.temperature}")
        if self.no_repeat_ngram < 0:
            raise ValueError(f"no_repeat_ngram must be 0 (off) or an n-gram length, got {self.no_repeat_ngram}")

    def processors(self) -> list[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
        """The logits processors `generate` would apply, in its order: the n-gram block, then (when
        sampling) the warpers. Greedy decoding with neither takes the argmax of the raw logits."""
        out: list = [NoRepeatNGramLogitsProcessor(self.no_repeat_ngram)] if self.no_repeat_ngram else []
        if not self.do_sample:
            return out
        if self.temperature != 1.0:
            out.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k:
            out.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            out.append(TopPLogitsWarper(self.top_p))
        return out


@dataclass
class DecodeStep:
    """One generated token: the text so far (whole characters only) and, on the last step, the result."""

    text: str
    token_ids: list[int]
    timings: dict[str, float]
    done: bool = False
    peak_memory_bytes: int | None = None


def decode_text(tokenizer, ids: list[int]) -> str:
    """The decoded text without a trailing partial character.

    Byte-level tokenizers split one CJK character or emoji over several tokens; decoding
    a prefix that ends inside such a character gives U+FFFD, which would flash in a stream
    or end an answer cut at the token limit. Those replacement characters are dropped.
    """
    return tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")


def _timings(prefill: float, decode: float, tokens: int, steps: int) -> dict[str, float]:
    return {
        "prefill_s": prefill,
        "decode_s": decode,
        "new_tokens": float(tokens),
        "tokens_per_s": steps / decode if decode > 0 and steps else 0.0,
    }


@torch.no_grad()
def stream_from_embeds(
    model,
    tokenizer,
    inputs_embeds: torch.Tensor,  # [T, hidden]
    options: SamplingOptions,
    stop_ids: list[int],
    step_context: Callable[[], ContextManager] | None = None,
) -> Iterator[DecodeStep]:
    """Yield a `DecodeStep` per generated token; the last one has ``done=True``.

    Each `next()` is one forward pass (the first one the prefill), run inside ``step_context()``
    when given: model state such as an adapter switch is set per step, never held across a
    `yield`, so other callers may use the model between steps. Timings count the forward
    passes only, not the time a caller spends between steps. An empty ``stop_ids`` decodes
    exactly ``max_new_tokens`` (the benchmark does). Stop tokens are not part of the output.
    """
    options.check()
    device = inputs_embeds.device
    enter = step_context or nullcontext
    processors = options.processors()
    generator = None
    if options.do_sample and options.seed is not None:
        generator = torch.Generator(device=device).manual_seed(options.seed)
    reset_peak_memory(device)
    cache = DynamicCache()
    ids: list[int] = []
    prefill = decode = 0.0
    steps = 0
    feed: dict[str, Any] = dict(inputs_embeds=inputs_embeds[None].to(model.dtype))
    while True:
        start = now(device)
        with enter():
            logits = model(**feed, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
        if processors:
            context = torch.tensor([ids], dtype=torch.long, device=device)
            for process in processors:
                logits = process(context, logits)
        if options.do_sample:
            token = int(torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator))
        else:
            token = int(logits.argmax(-1))
        seconds = now(device) - start
        if "inputs_embeds" in feed:
            prefill = seconds
        else:
            decode, steps = decode + seconds, steps + 1
        finished = token in stop_ids
        if not finished:
            ids.append(token)
        done = finished or len(ids) >= options.max_new_tokens
        yield DecodeStep(
            text=decode_text(tokenizer, ids), token_ids=list(ids), timings=_timings(prefill, decode, len(ids), steps),
            done=done, peak_memory_bytes=peak_memory_bytes(device) if done else None,
        )
        if done:
            return
        feed = dict(input_ids=torch.tensor([[token]], dtype=torch.long, device=device))


def generate_from_embeds(
    model,
    tokenizer,
    inputs_embeds: torch.Tensor,  # [T, hidden]
    options: SamplingOptions,
    stop_ids: list[int],
    step_context: Callable[[], ContextManager] | None = None,
) -> tuple[list[int], dict[str, float], int]:
    """Return (new token ids without the stop token, timings, peak memory in bytes)."""
    for step in stream_from_embeds(model, tokenizer, inputs_embeds, options, stop_ids, step_context):
        pass
    return step.token_ids, step.timings, step.peak_memory_bytes
