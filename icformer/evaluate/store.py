"""The resumable sample store: one JSONL of finished samples, each tagged with what it depends on."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..files import read_jsonl_lenient, write_jsonl
from ..results import CACHE_DIR


def settings_key(values: dict[str, Any]) -> str:
    """A short stable hash of what a sample depends on (LLM and weights fingerprints, settings)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_samples(path: Path) -> list[dict]:
    """A store's rows; a torn last line (a run killed mid-write) is skipped."""
    return read_jsonl_lenient(path, accept=lambda row: isinstance(row, dict) and "id" in row)[0]


class SampleStore:
    """One JSONL of finished samples, kept to exactly the planned ids, each id with its own settings key.

    A key covers only what its sample depends on (say, the LLM alone for the full context), so
    changing one compressor's weights leaves the other methods' rows in place. Rows that do not
    belong (another key, or an id outside the plan) go to ``.cache/<stem>.<key>.jsonl``, and rows
    of a planned key found there come back.
    """

    def __init__(self, path: Path, planned: dict[str, str]) -> None:
        self.path, self.planned = path, dict(planned)
        self.cache_dir = path.parent / CACHE_DIR
        found: dict[str, dict] = {}
        elsewhere: dict[str, list[dict]] = defaultdict(list)
        mine_cached = [self._cache_path(key) for key in sorted(set(self.planned.values()))]
        for row in [r for p in mine_cached for r in read_samples(p)] + read_samples(path):
            if self.planned.get(row["id"]) == row.get("config"):
                found[row["id"]] = row
            else:
                elsewhere[str(row.get("config"))].append(row)
        for cached in mine_cached:
            cached.unlink(missing_ok=True)
        for other_key, rows in elsewhere.items():
            self._stash(other_key, [r for r in rows if r["id"] not in found])
        self.rows = found
        self.rewrite()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / f"{self.path.stem}.{key}.jsonl"

    def _stash(self, key: str, rows: list[dict]) -> None:
        if not rows:
            return
        path = self._cache_path(key)
        merged = {r["id"]: r for r in read_samples(path) + rows}
        write_jsonl(path, merged.values())

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.rows

    def add(self, row: dict) -> None:
        """Append a finished sample at once, so a killed run keeps it."""
        row = {**row, "config": self.planned[row["id"]]}
        self.rows[row["id"]] = row
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()

    def ordered(self) -> list[dict]:
        return [self.rows[i] for i in self.planned if i in self.rows]

    def missing(self) -> str | None:
        """"<done> of <planned> samples" while some are unfinished, else None."""
        if len(self.rows) < len(self.planned):
            return f"{len(self.rows)} of {len(self.planned)} samples"
        return None

    def rewrite(self) -> None:
        write_jsonl(self.path, self.ordered())
