"""Token layouts the frozen LLM reads around a compressed context (docs/paper.md §3.3).

A checkpoint must be prompted the way it was trained, so each compressor config names a prompt
style (``ChunkedCompressorConfig.prompt_style``). ``|`` separates pieces tokenised apart (each
gets the tokenizer's own word-start handling, e.g. Llama's leading "▁"), as their sources do:

``default`` (checkpoints trained by this project):
    compressor reads  context
    reconstruction    [vectors][AE] <bos>  -> the context, EOS
    question          chat-template(user: INSTRUCTION [vectors][FT] "\\n\\nPrompt: " question) -> answer
                      (no chat template: <bos> INSTRUCTION [vectors][FT] "\\n\\nPrompt: " question "\\n")

``icformer-reference`` (import-checkpoint of wonderful9462/IC-Former; learnt from its modules.py,
data_utils.py and generate.py):
    compressor reads  context (no <s>: its fine-tuning and generation tokenise without one)
    reconstruction    [vectors][AE]  -> the LLM writes the context itself (its pre-training puts
                      <s> after [AE] only for windows that start a document, where the compressor
                      read that <s> too)
    question          <bos> "[INST] " INSTRUCTION [vectors][FT] | "\\n\\nPrompt: " question | "[/INST]"

``icae-v2`` (import-checkpoint of a getao/icae v2 release; learnt from code/icae_v2/
fine_tuned_inference.py, pretrained_inference.py and training_utils.py):
    compressor reads  <bos> context (both inference scripts and pre-training encode the tokenizer's
                      output, <s> included; only its fine-tuning script left <s> out)
    reconstruction    [vectors][AE] <bos>  (pre-training target is "<s> context </s>", so the
                      <bos> its [AE] predicts is given, as the default does)
    question          <bos> "[INST]" [vectors][FT] | question | "[/INST]"   (its code hard-codes the
                      Mistral ids 1 733 16289 28793 and 733 28748 16289 28793 for these pieces)

Inference, training and evaluation all build their inputs here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# The paper's fine-tuning instruction, verbatim (its grammar included), so PwC-style
# checkpoints see the wording they were trained on.
QA_INSTRUCTION = "Response the Prompt based on the below text:\n\n"
QUESTION_LEAD = "\n\nPrompt: "
# Evaluation asks every method for a short answer in the same words, after the question, so the
# layouts above (and what checkpoints were trained on) stay as they are. Of six wordings tried on 16
# held-out questions with the full context, this one was among the two best (F1 0.14; the other,
# longer, differed by 0.004).
SHORT_ANSWER_INSTRUCTION = "Reply with the answer only (a few words, not a sentence)."
PROMPT_STYLES = ("default", "icformer-reference", "icae-v2")
# [INST]-style prompts of the releases: (text after <bos>, before the vectors; text before the question)
_INST_STYLES = {
    "icformer-reference": (f"[INST] {QA_INSTRUCTION}", QUESTION_LEAD),
    "icae-v2": ("[INST]", ""),
}
_SLOT = "<<ICFORMER_CONTEXT_SLOT>>"


@dataclass(frozen=True)
class Layout:
    """Token ids before and after the compressed context, and the task vector between."""

    prefix_ids: list[int]
    task: str | None  # "AE", "FT" or None (full context: no task vector)
    suffix_ids: list[int]


def check_style(style: str) -> str:
    """`style` itself, or a ValueError naming the known styles (a typo must not fall back silently)."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {list(PROMPT_STYLES)}")
    return style


def prompt_style(model: Any | None) -> str:
    """The style a compressor was trained with; "default" for none (the full context)."""
    return "default" if model is None else check_style(model.config.prompt_style)


def stop_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|eot_id|>", "</s>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def context_prefix_ids(tokenizer, style: str = "default") -> list[int]:
    """Token ids the compressor reads before a context's own (ICAE v2's encoder saw <s> first)."""
    return _bos(tokenizer) if check_style(style) == "icae-v2" else []


def reconstruction_layout(tokenizer, style: str = "default") -> Layout:
    """[vectors][AE], then <bos> unless the style's LLM learnt to start the context itself."""
    suffix = [] if check_style(style) == "icformer-reference" else _bos(tokenizer)
    return Layout(prefix_ids=[], task="AE", suffix_ids=suffix)


def question_layout(tokenizer, question: str, task: str | None = "FT", style: str = "default") -> Layout:
    """The prompt around the vectors for a question; "default" renders the LLM's chat template."""
    if check_style(style) in _INST_STYLES:
        opening, lead = _INST_STYLES[style]
        suffix = _encode(tokenizer, lead + question) + _encode(tokenizer, "[/INST]")
        return Layout(prefix_ids=_bos(tokenizer) + _encode(tokenizer, opening), task=task, suffix_ids=suffix)
    user = f"{QA_INSTRUCTION}{_SLOT}{QUESTION_LEAD}{question}"
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        bos = []
    else:  # plain LM: instruction and question, answer follows a newline
        rendered = f"{user}\n"
        bos = _bos(tokenizer)
    before, after = rendered.split(_SLOT)
    return Layout(prefix_ids=bos + _encode(tokenizer, before), task=task, suffix_ids=_encode(tokenizer, after))


def short_answer_question(question: str) -> str:
    """`question` followed by the short-answer instruction, on its own line."""
    return f"{question.strip()}\n{SHORT_ANSWER_INSTRUCTION}"


def assemble(embed, layout: Layout, vectors: torch.Tensor, task_vector: torch.Tensor | None) -> torch.Tensor:
    """[prefix tokens][vectors][task vector][suffix tokens] as one [T, hidden] tensor."""
    device, dtype = vectors.device, vectors.dtype
    ids = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    parts = [embed(ids(layout.prefix_ids)).to(dtype), vectors]
    if task_vector is not None:
        parts.append(task_vector.to(device=device, dtype=dtype)[None])
    parts.append(embed(ids(layout.suffix_ids)).to(dtype))
    return torch.cat(parts, dim=0)
