"""Example contexts shipped in ``assets/examples/*.json``.

Each file holds one object::

    {"id": "moby_dick", "title": "...", "source": "...", "text": "...",
     "questions": [{"question": "...", "answer": "..."}, ...]}
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from icformer.defaults import REPO_DIR

log = logging.getLogger(__name__)

EXAMPLES_DIR = REPO_DIR / "assets" / "examples"


@dataclass(frozen=True)
class Example:
    id: str
    title: str
    source: str
    text: str
    questions: tuple[tuple[str, str], ...]  # (question, reference answer)


def load_examples(directory: str | Path = EXAMPLES_DIR) -> list[Example]:
    """Every readable example, sorted by title; a malformed file is skipped with a log line."""
    examples = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            questions = tuple((q["question"], q.get("answer", "")) for q in raw.get("questions", []))
            examples.append(Example(raw.get("id", path.stem), raw["title"], raw.get("source", ""), raw["text"], questions))
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("skipping example %s: %s", path, err)
    return sorted(examples, key=lambda e: e.title)
