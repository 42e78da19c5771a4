"""Training objectives (docs/paper.md §3): the frozen LLM scores what it should read back.

* autoencoding (pre-training):  [vectors][AE] <bos> context </s>   loss on context + </s>
* language modelling (ICAE):    [vectors][LM] continuation </s>     loss on the continuation
* fine-tuning (PwC-style QA):   template(INSTRUCTION [vectors][FT] prompt) answer </s>
  loss on the answer only, optionally plus KL to the same LLM reading the full context.

The layouts shown are the "default" prompt style; a compressor imported from a release keeps
training in its own (prompts.py), so the example builders take the compressor's style.

Only the compressor (and ICAE's LoRA) learns; gradients pass through the frozen LLM.

`readout_weight` > 0 adds a named deviation from the paper (docs/learning.md): each IC-Former
digest must also let a per-slot linear map and the LLM's own frozen LM head name the tokens of
its share of the chunk. That asks the digests to carry their window's tokens from the first step,
at a cost of one [k, h] x [h, vocab] product per slot, without running the LLM. With
`llm_weight` 0 it is the whole objective: a warm-up stage about 8x cheaper per sample than one that
runs the frozen LLM.

`hidden_weight` > 0 is another named deviation: the LLM's hidden states at the target tokens, in every
layer, must also come close to those of the same LLM reading the raw context in the vectors' place (same
layout, same targets). The loss at the top layer says only which token was wrong; this says, layer by
layer, what reading the context should have put there. It costs one more forward pass, without grad.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .compressor import encode
from .llm import TargetLLM
from .compressors.modeling_icformer import chunk_bounds
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

    def __init__(self, compressor: nn.Module, target: TargetLLM, kl_weight: float = 0.0,
                 readout_weight: float = 0.0, llm_weight: float = 1.0, hidden_weight: float = 0.0) -> None:
        super().__init__()
        self.compressor = compressor
        self.llm = target.model
        self._target = target  # a plain attribute, not a submodule
        self.kl_weight = kl_weight
        self.readout_weight, self.llm_weight, self.hidden_weight = readout_weight, llm_weight, hidden_weight
        self.parts: dict[str, torch.Tensor] = {}
        if llm_weight <= 0 and readout_weight <= 0:
            raise ValueError("llm_weight 0 needs readout_weight > 0: otherwise nothing is learnt")
        if readout_weight > 0:
            if compressor.method != "icformer":
                raise ValueError("readout_weight is an IC-Former option: ICAE's slots have no token windows")
            self.readout = WindowReadout(compressor.config.hidden_size, compressor.config.k, compressor.config.L)

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

    def _logits(self, inputs, mask, labels, layers: bool = False):
        """Logits at the positions that predict a label (next-token shift applied), their labels, and
        with `layers` every layer's hidden states at those positions (else None)."""
        out = self.llm.base_model(inputs_embeds=inputs, attention_mask=mask, output_hidden_states=layers)
        predicts = labels[:, 1:] != IGNORE
        states = [h[:, :-1][predicts] for h in out.hidden_states[1:]] if layers else None
        return self.llm.lm_head(out.last_hidden_state[:, :-1][predicts]), labels[:, 1:][predicts], states

    def forward(self, examples: list[Example], swap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean token loss, number of target tokens) for a micro-batch.

        `swap`: each example is scored with the next one's vectors (the last with the first's), the
        control that says what the vectors carry (diagnose.py). It goes through forward, not a side
        method, so that wrappers that gather sharded weights in forward (FSDP) see the call.
        """
        own = vectors = self.encode(examples)
        if swap:
            vectors = vectors[1:] + vectors[:1]
        self.parts = {}  # each term of the loss, detached, for the training log
        if self.llm_weight <= 0 and self.training:  # the readout alone: the LLM's layers never run (evaluation runs them)
            readout = self.readout(own, [e.context_ids for e in examples], self.llm.lm_head)
            self.parts["readout_loss"] = readout.detach()
            return self.readout_weight * readout, torch.tensor(sum(len(e.context_ids) for e in examples))
        inputs, mask, labels = self._sequences(examples, vectors)
        hidden = self.hidden_weight > 0 and self.training  # held-out scores need only the LLM's loss
        with self._decoding():
            logits, targets, states = self._logits(inputs, mask, labels, layers=hidden)
        llm_loss = F.cross_entropy(logits.float(), targets)
        self.parts["token_accuracy"] = (logits.argmax(-1) == targets).float().mean().detach()
        loss = self.llm_weight * llm_loss
        if self.kl_weight > 0:
            kl = self._kl_to_full_context(examples, logits)
            self.parts["kl"] = kl.detach()
            loss = loss + self.kl_weight * kl
        if self.readout_weight > 0:
            readout = self.readout(own, [e.context_ids for e in examples], self.llm.lm_head)
            self.parts["readout_loss"] = readout.detach()
            loss = loss + self.readout_weight * readout
        if hidden:
            distance = self._hidden_distance(examples, states)
            self.parts["hidden_distance"] = distance.detach()
            loss = loss + self.hidden_weight * distance
        if len(self.parts) > 1:  # a mixed loss: its LLM term apart
            self.parts["llm_loss"] = llm_loss.detach()
        return loss, torch.tensor(targets.numel(), device=loss.device)

    def encode(self, examples: list[Example]) -> list[torch.Tensor]:
        """The compressed context of each example, as the LLM will read it."""
        return encode(self.compressor, self._target, [e.context_ids for e in examples])

    def _kl_to_full_context(self, examples: list[Example], student_logits: torch.Tensor) -> torch.Tensor:
        """KL(teacher || student) on the answer tokens; the teacher reads the raw context."""
        teacher_logits, _, _ = self._reading_the_context(examples, task_vector=False)
        return F.kl_div(
            student_logits.float().log_softmax(-1), teacher_logits.float().log_softmax(-1),
            log_target=True, reduction="batchmean",
        )

    def _reading_the_context(self, examples: list[Example], task_vector: bool, layers: bool = False):
        """`_logits` of the frozen LLM reading each example's raw context in its vectors' place, without grad:
        the teacher of the KL term (no task vector) and of the hidden distance (with it)."""
        with torch.no_grad(), self._decoding():
            context = encode(None, self._target, [e.context_ids for e in examples])
            return self._logits(*self._sequences(examples, context, teacher=not task_vector), layers=layers)

    def _hidden_distance(self, examples: list[Example], states: list[torch.Tensor]) -> torch.Tensor:
        """Squared distance to the hidden states of the LLM reading the raw context in the same layout (its
        task vector too, so it knows the task), over target tokens, relative to their size, mean over layers.

        Each layer's output is compared as the next layer reads it, through that layer's input RMSNorm: a
        few huge activations (one dimension is ~24x the RMS in SmolLM2) would otherwise be all a raw or
        unit-normalised distance measures, and the LLM's norms give them almost no weight."""
        _, _, teacher = self._reading_the_context(examples, task_vector=True, layers=True)
        layers = self.llm.get_decoder().layers
        reads = [layer.input_layernorm for layer in layers[1:]] + [nn.Identity()]  # the last is the final norm's output
        distances = []
        for read, s, t in zip(reads, states, teacher):
            s, t = read(s).float(), read(t).float()
            distances.append((s - t).pow(2).sum(-1).mean() / t.pow(2).sum(-1).mean())
        return torch.stack(distances).mean()


class WindowReadout(nn.Module):
    """Per-slot linear maps from a digest to the tokens of its share of the chunk, via a frozen LM head.

    Digest i of a chunk of m tokens owns tokens [i*m/k, (i+1)*m/k) (as `own_windows` in the model);
    slot s reads the s-th of them. The maps start as the identity: a digest that equals a token's
    embedding names that token through the tied head.
    """

    def __init__(self, hidden_size: int, k: int, chunk_size: int) -> None:
        super().__init__()
        self.k, self.chunk_size = k, chunk_size
        slots = -(-chunk_size // k)
        self.maps = nn.Parameter(torch.eye(hidden_size).repeat(slots, 1, 1))

    def targets(self, num_tokens: int) -> list[tuple[int, int, int]]:
        """(digest row, slot, token position) triples for one context of `num_tokens` tokens."""
        triples = []
        for chunk, (start, end) in enumerate(chunk_bounds(num_tokens, self.chunk_size)):
            m = end - start
            for i in range(self.k):
                first = i * m // self.k
                last = max((i + 1) * m // self.k, first + 1)
                for slot, position in enumerate(range(start + first, min(start + last, end))):
                    if slot < len(self.maps):
                        triples.append((chunk * self.k + i, slot, position))
        return triples

    def forward(self, vectors: list[torch.Tensor], ids: list[list[int]], lm_head: nn.Module) -> torch.Tensor:
        """Mean cross-entropy of every owned token, read from its digest (one product per slot)."""
        reads, tokens = [], []
        for slot, slot_map in enumerate(self.maps):
            rows, wanted = [], []
            for digests, context in zip(vectors, ids):
                picks = [(row, position) for row, s, position in self.targets(len(context)) if s == slot]
                if picks:
                    index = torch.tensor([row for row, _ in picks], device=digests.device)
                    rows.append(digests.index_select(0, index))
                    wanted.extend(context[position] for _, position in picks)
            if rows:
                reads.append(torch.cat(rows) @ slot_map)
                tokens.extend(wanted)
        logits = lm_head(torch.cat(reads).to(lm_head.weight.dtype)).float()
        return F.cross_entropy(logits, torch.tensor(tokens, device=logits.device))
