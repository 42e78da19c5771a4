"""Batched greedy decoding and timed encoding, shared by every task that generates.

Tasks call these through this module (``decoding.generate_batch``), so a test can count or
interrupt every generation in one place.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Sequence

import torch
from transformers import GenerationConfig, StoppingCriteriaList

from ..compressor import ContextCompressor, encode
from ..prompts import Layout, assemble, stop_token_ids
from ..timing import now
from .methods import Method


class FirstLine:
    """A stopping criterion: a sequence is done once its text, past leading blanks, has a line break."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        return torch.tensor(["\n" in t.lstrip() for t in texts], dtype=torch.bool, device=input_ids.device)


def _prompt_embeds(cc: ContextCompressor, items: Sequence[tuple[Any, Layout, torch.Tensor]]) -> list[torch.Tensor]:
    """Each prompt's embeddings, as `ContextCompressor.answer` and `.reconstruct` assemble them."""
    target = cc.target
    return [
        assemble(target.embed, layout, vectors.to(device=target.device, dtype=target.dtype),
                 model.task_embedding(layout.task) if layout.task else None)
        for model, layout, vectors in items
    ]


def _padded(cc: ContextCompressor, embeds: list[torch.Tensor], *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch and its attention mask: left-padded for generation (every prompt ends where
    generation starts), right-padded for teacher forcing (positions count from each row's start)."""
    width = max(e.shape[0] for e in embeds)
    batch = torch.zeros(len(embeds), width, embeds[0].shape[1], dtype=cc.llm.dtype, device=cc.device)
    mask = torch.zeros(len(embeds), width, dtype=torch.long, device=cc.device)
    for i, e in enumerate(embeds):
        rows = slice(width - e.shape[0], width) if left else slice(0, e.shape[0])
        batch[i, rows] = e
        mask[i, rows] = 1
    return batch, mask


@torch.no_grad()
def generate_batch(cc: ContextCompressor, items: Sequence[tuple[Any, Layout, torch.Tensor]], max_new_tokens: int, *,
                   first_line: bool = False, no_repeat_ngram: int = 0) -> list[tuple[list[int], str]]:
    """Greedy answers to several prompts in one left-padded batch: (new token ids, text) each.

    `items` are (compressor model or None, layout, vectors): the inputs `ContextCompressor.answer`
    and `.reconstruct` build, decoded together because a CPU decodes 8 sequences in about a third
    of the time of 8 one by one. `first_line` stops a sequence at its first line break and keeps
    only that line (the short-answer protocol). `no_repeat_ngram`: as `SamplingOptions` (0: plain greedy).
    """
    tokenizer = cc.tokenizer
    batch, mask = _padded(cc, _prompt_embeds(cc, items), left=True)
    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=pad,
                              no_repeat_ngram_size=no_repeat_ngram)
    criteria = StoppingCriteriaList([FirstLine(tokenizer)]) if first_line else None
    with cc._decoder(), warnings.catch_warnings():
        # The block covers the new tokens only (the prompt is vectors), as in SamplingOptions: what we want.
        warnings.filterwarnings("ignore", message="Passing `no_repeat_ngram_size` with `inputs_embeds`")
        out = cc.llm.generate(inputs_embeds=batch, attention_mask=mask, generation_config=config,
                              stopping_criteria=criteria)
    results = []
    for row in out.tolist():
        ids = list(itertools.takewhile(lambda t: t not in stops, row))
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        results.append((ids, text.split("\n")[0].strip() if first_line else text))
    return results


@torch.no_grad()
def teacher_forced_ce(cc: ContextCompressor, items: Sequence[tuple[Any, Layout, torch.Tensor]],
                      targets: Sequence[list[int]]) -> list[float]:
    """Each prompt's mean cross-entropy (nats/token) of its target tokens, teacher-forced, in one batch.

    A softer signal than a greedy answer's F1: how much likelier the vectors make the reference
    answer, measurable even where the frozen LLM's answers are too loose to score.
    """
    prompts = _prompt_embeds(cc, items)
    ids = [torch.tensor(t, device=cc.device) for t in targets]
    batch, mask = _padded(cc, [torch.cat([p, cc.target.embed(t).to(p.dtype)]) for p, t in zip(prompts, ids)], left=False)
    with cc._decoder():
        hidden = cc.llm.base_model(inputs_embeds=batch, attention_mask=mask).last_hidden_state
    out = []
    for row, (prompt, target) in enumerate(zip(prompts, ids)):
        start = prompt.shape[0] - 1  # the position that predicts the first target token
        logits = cc.llm.lm_head(hidden[row, start:start + target.shape[0]])
        out.append(float(torch.nn.functional.cross_entropy(logits.float(), target)))
    return out


@torch.no_grad()
def encode_timed(method: Method, ids: list[int]) -> tuple[torch.Tensor, float]:
    """The vectors the LLM reads for exact token ids (random sequences do not survive decode/encode)."""
    start = now(method.cc.device)
    vectors = encode(method.model, method.cc.target, [ids])[0]
    return vectors, now(method.cc.device) - start
