"""Input hygiene: every user string passes here before it reaches a tokenizer or a model."""

from __future__ import annotations

import re

# C0/C1 control characters except tab and newline; they carry no meaning for the LLM
# and some tokenizers map them to odd byte tokens.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

DEFAULT_MAX_CONTEXT_TOKENS = 16384
# A character budget checked before tokenising, so a multi-megabyte paste is refused
# without allocating token ids for it (no tokenizer averages more than ~20 chars/token).
CHARS_PER_TOKEN_BOUND = 20


def clean_text(text: str | bytes, what: str = "context") -> str:
    """Decode (invalid UTF-8 becomes U+FFFD), drop control characters, refuse empty input."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string, got {type(text).__name__}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if not text.strip():
        raise ValueError(f"The {what} is empty (or only whitespace / control characters).")
    return text


def check_length(num_chars_or_tokens: int, max_tokens: int, unit: str = "tokens") -> None:
    """Refuse an over-long context with a message that names both numbers."""
    limit = max_tokens * CHARS_PER_TOKEN_BOUND if unit == "characters" else max_tokens
    if num_chars_or_tokens > limit:
        raise ValueError(
            f"The context is too long: {num_chars_or_tokens} {unit}, the limit is {limit} {unit} "
            f"(max_context_tokens={max_tokens}). Shorten it or raise max_context_tokens."
        )
