"""Small file helpers every layer shares: JSONL, sha256, and writes a reader never sees half of."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield one dict per non-empty line of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a whole JSONL file into a list of dicts."""
    return list(iter_jsonl(path))


def read_jsonl_lenient(path: str | Path, accept: Callable[[Any], bool] = lambda row: isinstance(row, dict),
                       limit: int | None = None) -> tuple[list[dict], int]:
    """(rows, unreadable lines) of a JSONL store: lines that do not parse or that `accept` rejects
    (a torn last line of a run killed mid-write) are counted and skipped, not fatal; blank lines are
    neither. At most `limit` rows."""
    rows: list[dict] = []
    bad = 0
    if not Path(path).is_file():
        return rows, bad
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if accept(row):
                rows.append(row)
            else:
                bad += 1
    return rows, bad


def partial_path(path: str | Path) -> Path:
    """Where to write `path` before renaming it into place (same folder, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> dict:
    """Write rows as UTF-8 JSONL (one compact object per line), atomically; return ``{"sha256", "rows"}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    n = 0
    tmp = partial_path(path)
    with open(tmp, "wb") as f:
        for row in rows:
            line = (json.dumps(row, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode("utf-8")
            f.write(line)
            h.update(line)
            n += 1
    os.replace(tmp, path)
    return {"sha256": h.hexdigest(), "rows": n}


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` beside `path`, then rename it over: an interrupted run leaves the old file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 4 MiB pieces (GGUF files are ~100 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
