"""Input hygiene: every user string passes here before it reaches a tokenizer or a model.

The one place that words input errors, so the library, the command line and the app refuse
the same input with the same message, in user terms (numbers with thousands separators,
no parameter names).
"""

from __future__ import annotations

import re

# C0/C1 control characters except tab and newline; they carry no meaning for the LLM
# and some tokenizers map them to odd byte tokens.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

DEFAULT_MAX_CONTEXT_TOKENS = 16384
# A character budget checked before tokenising, so a multi-megabyte paste is refused
# without allocating token ids for it (no tokenizer averages more than ~20 chars/token).
CHARS_PER_TOKEN_BOUND = 20
# Text whose first characters are more than this share control or undecodable ones is binary data.
_BINARY_SAMPLE, _BINARY_SHARE, _BINARY_MIN = 20_000, 0.1, 8


def clean_text(text: str | bytes, what: str = "context", hint: str = "") -> str:
    """Decode (invalid UTF-8 becomes U+FFFD), refuse empty or binary input, drop control characters.

    ``hint`` follows the "empty" message (the app says how to fill the field it names).
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string, got {type(text).__name__}")
    sample = text[:_BINARY_SAMPLE]
    junk = sum(1 for ch in sample if ch == "\ufffd" or (ord(ch) < 32 and ch not in "\t\n\r") or 0x7F <= ord(ch) < 0xA0)
    if junk > max(_BINARY_MIN, _BINARY_SHARE * len(sample)):
        raise ValueError(
            f"The {what} looks like binary data ({junk:,} of its first {len(sample):,} characters are control or "
            "undecodable bytes). Paste plain text."
        )
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if not text.strip():
        raise ValueError(f"The {what} is empty.{' ' + hint if hint else ''}")
    return text


def check_length(count: int, max_tokens: int, unit: str = "tokens", what: str = "context") -> None:
    """Refuse an over-long input; `unit` "characters" checks the character budget of `max_tokens`."""
    limit = max_tokens * CHARS_PER_TOKEN_BOUND if unit == "characters" else max_tokens
    if count > limit:
        budget = f" (at most {limit:,} characters)" if unit == "characters" else ""
        raise ValueError(
            f"The {what} is too long: {count:,} {unit}; the limit is {max_tokens:,} tokens{budget}. Shorten it."
        )
