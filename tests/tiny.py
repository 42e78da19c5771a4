"""Tiny, offline, deterministic stand-ins for the target LLM and its tokenizer.

Tests cannot reach the Hugging Face hub, and the embedded SmolLM2 is too slow
for unit tests, so these builders make a byte-level BPE tokenizer (any text
round-trips, no unknown tokens) with a ChatML chat template like SmolLM2's,
and a 2-layer random Llama sized to it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "In-context compression turns a long context into a few digest vectors.",
    "A small language model answers questions about the compressed context.",
    "Hello world! How are you today? I am fine, thank you.",
    "Numbers like 0123456789 and symbols such as #, $, % and & also appear.",
    "user assistant system: please summarise the following document.",
]

_VOCAB_SIZE = 384  # 256 byte symbols + specials + a few merges


def make_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer (~380 tokens) with a ChatML template.

    eos is ``<|im_end|>`` (the end of a chat turn), as in SmolLM2, so
    generation stops at the end of an assistant turn.
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_llm(vocab_size: int, hidden_size: int = 32) -> LlamaForCausalLM:
    """A seeded, float32, 2-layer random Llama (tied embeddings, like SmolLM2)."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        dtype=torch.float32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model.to(torch.float32).eval()


def save_tiny_llm(dir: str | Path) -> Path:
    """Save the tiny tokenizer and a matching tiny model into ``dir``; return it."""
    path = Path(dir)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_llm(len(tokenizer))
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id = tokenizer.bos_token_id
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
