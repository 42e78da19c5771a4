"""Token windows of the validation text (pretrain_valid.jsonl), cut by seed: what reconstruction,
the randomness kinds and the attention analysis compress."""

from __future__ import annotations

import random
from collections import defaultdict


class TextSource:
    """Token streams of whole documents from pretrain_valid.jsonl, windows cut from them by seed."""

    def __init__(self, rows: list[dict], tokenizer) -> None:
        docs: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            docs[str(row.get("document", row.get("id")))].append(row)
        self.streams = []
        for name in sorted(docs):
            text = "\n\n".join(r["text"] for r in sorted(docs[name], key=lambda r: str(r.get("id", ""))))
            self.streams.append(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if not any(self.streams):
            raise ValueError("pretrain_valid.jsonl has no text")
        self.joined = [t for s in self.streams for t in s]

    def window(self, length: int, rng: random.Random) -> list[int]:
        """`length` consecutive tokens of one document (of all joined when none is that long)."""
        fitting = [s for s in self.streams if len(s) >= length]
        stream = rng.choice(fitting) if fitting else self.joined
        if len(stream) < length:
            raise ValueError(f"not enough validation text for a {length}-token window ({len(stream)} tokens)")
        start = rng.randint(0, len(stream) - length)
        return list(stream[start:start + length])
