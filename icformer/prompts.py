"""Token layouts the frozen LLM reads around a compressed context (PAPER.md §3).

Reconstruction:  [vectors][AE] <bos> -> the context back, then EOS
Question:        chat-template(user: INSTRUCTION [vectors][FT] "\\n\\nPrompt: " question) -> answer

The same layouts serve inference, training and evaluation, so they live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The paper's fine-tuning instruction, verbatim (its grammar included), so PwC-style
# checkpoints see the wording they were trained on.
QA_INSTRUCTION = "Response the Prompt based on the below text:\n\n"
_SLOT = "<<ICFORMER_CONTEXT_SLOT>>"


@dataclass(frozen=True)
class Layout:
    """Token ids before and after the compressed context, and the task vector between."""

    prefix_ids: list[int]
    task: str | None  # "AE", "FT" or None (full context: no task vector)
    suffix_ids: list[int]


def stop_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|eot_id|>", "</s>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def reconstruction_layout(tokenizer) -> Layout:
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return Layout(prefix_ids=[], task="AE", suffix_ids=start)


def question_layout(tokenizer, question: str, task: str | None = "FT") -> Layout:
    """Render the chat template (when the tokenizer has one) around a slot for the vectors."""
    user = f"{QA_INSTRUCTION}{_SLOT}\n\nPrompt: {question}"
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        bos = []
    else:  # plain LM: instruction and question, answer follows a newline
        rendered = f"{user}\n"
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    before, after = rendered.split(_SLOT)
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return Layout(prefix_ids=bos + encode(before), task=task, suffix_ids=encode(after))


def assemble(embed, layout: Layout, vectors: torch.Tensor, task_vector: torch.Tensor | None) -> torch.Tensor:
    """[prefix tokens][vectors][task vector][suffix tokens] as one [T, hidden] tensor."""
    device, dtype = vectors.device, vectors.dtype
    ids = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    parts = [embed(ids(layout.prefix_ids)).to(dtype), vectors]
    if task_vector is not None:
        parts.append(task_vector.to(device=device, dtype=dtype)[None])
    parts.append(embed(ids(layout.suffix_ids)).to(dtype))
    return torch.cat(parts, dim=0)
