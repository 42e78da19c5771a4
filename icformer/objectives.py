"""Training objectives (PAPER.md §3): the frozen LLM scores what it should read back.

* autoencoding (pre-training):  [vectors][AE] <bos> context </s>   loss on context + </s>
* language modelling (ICAE):    [vectors][LM] continuation </s>     loss on the continuation
* fine-tuning (PwC-style QA):   template(INSTRUCTION [vectors][FT] prompt) answer </s>
  loss on the answer only, optionally plus KL to the same LLM reading the full context.

The layouts shown are the "default" prompt style; a compressor imported from a release keeps
training in its own (prompts.py), so the example builders take the compressor's style.

Only the compressor (and ICAE's LoRA) learns; gradients pass through the frozen LLM.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .compressor import encode
from .llm import TargetLLM
from .prompts import Layout, assemble, question_layout, reconstruction_layout

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One training sample: the context to compress, what surrounds it, what must follow."""

    context_ids: list[int]
    layout: Layout
    target_ids: list[int]


def autoencoding_example(tokenizer, context_ids: list[int], style: str = "default") -> Example:
    return Example(context_ids, reconstruction_layout(tokenizer, style), context_ids + [tokenizer.eos_token_id])


def language_modelling_example(tokenizer, context_ids: list[int], continuation_ids: list[int]) -> Example:
    return Example(context_ids, Layout([], "LM", []), continuation_ids + [tokenizer.eos_token_id])


def question_example(
    tokenizer, context_ids: list[int], question: str, answer_ids: list[int], style: str = "default"
) -> Example:
    layout = question_layout(tokenizer, question, style=style)
    return Example(context_ids, layout, answer_ids + [tokenizer.eos_token_id])


class CompressionObjective(nn.Module):
    """Wraps compressor + frozen LLM so one `forward(examples)` returns the loss.

    Being one module lets `accelerate` wrap it for DDP (ICAE's LoRA weights live inside
    the LLM, so the LLM must be a submodule too; its frozen weights are never synced).
    """

    def __init__(self, compressor: nn.Module, target: TargetLLM, kl_weight: float = 0.0) -> None:
        super().__init__()
        self.compressor = compressor
        self.llm = target.model
        self._target = target  # a plain attribute, not a submodule
        self.kl_weight = kl_weight

    def _decoding(self):
        """Decode with ICAE's adapter off; IC-Former never touches the LLM's weights."""
        disabled = getattr(self.compressor, "adapter_disabled", None)
        return disabled() if disabled is not None else nullcontext()

    def _sequences(self, examples: list[Example], vectors: list[torch.Tensor], teacher: bool = False):
        """Right-padded inputs_embeds, attention mask and labels for a batch of examples."""
        embed, rows, labels = self._target.embed, [], []
        for example, vec in zip(examples, vectors):
            layout = Layout(example.layout.prefix_ids, None, example.layout.suffix_ids) if teacher else example.layout
            task = self.compressor.task_embedding(layout.task) if layout.task else None
            prompt = assemble(embed, layout, vec, task)
            target = torch.tensor(example.target_ids, device=prompt.device)
            rows.append(torch.cat([prompt, embed(target).to(prompt.dtype)]))
            labels.append(torch.cat([torch.full((prompt.shape[0],), IGNORE, device=prompt.device), target]))
        lengths = torch.tensor([r.shape[0] for r in rows], device=rows[0].device)
        inputs = nn.utils.rnn.pad_sequence(rows, batch_first=True)
        mask = (torch.arange(inputs.shape[1], device=inputs.device) < lengths[:, None]).long()
        return inputs, mask, nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE)

    def _logits(self, inputs, mask, labels):
        """Logits at the positions that predict a label (next-token shift applied)."""
        hidden = self.llm.base_model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        predicts = labels[:, 1:] != IGNORE
        return self.llm.lm_head(hidden[:, :-1][predicts]), labels[:, 1:][predicts]

    def forward(self, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean token loss, number of target tokens) for a micro-batch."""
        vectors = encode(self.compressor, self._target, [e.context_ids for e in examples])
        inputs, mask, labels = self._sequences(examples, vectors)
        with self._decoding():
            logits, targets = self._logits(inputs, mask, labels)
        loss = F.cross_entropy(logits.float(), targets)
        if self.kl_weight > 0:
            loss = loss + self.kl_weight * self._kl_to_full_context(examples, logits)
        return loss, torch.tensor(targets.numel(), device=loss.device)

    def _kl_to_full_context(self, examples: list[Example], student_logits: torch.Tensor) -> torch.Tensor:
        """KL(teacher || student) on the answer tokens; the teacher reads the raw context."""
        with torch.no_grad(), self._decoding():
            context = encode(None, self._target, [e.context_ids for e in examples])
            teacher_logits, _ = self._logits(*self._sequences(examples, context, teacher=True))
        return F.kl_div(
            student_logits.float().log_softmax(-1), teacher_logits.float().log_softmax(-1),
            log_target=True, reduction="batchmean",
        )
