"""The defaults every layer agrees on: where things live, which environment variables move them,
the embedded default's shape. One place, so k=32 / L=128 or a path is never written twice."""

from __future__ import annotations

import os
from pathlib import Path

# Methods behind ContextCompressor, in display order: IC-Former, the ICAE baseline, and the raw
# context itself (the full-context reference every comparison needs).
METHODS = ("icformer", "icae", "full")
METHOD_NAMES = {"icformer": "IC-Former", "icae": "ICAE", "full": "full context"}  # as people write them

REPO_DIR = Path(__file__).resolve().parent.parent
ASSETS_ENV = "ICFORMER_ASSETS"  # checkpoints/, examples/, results/ of the embedded default
CACHE_ENV = "ICFORMER_CACHE"  # the converted embedded LLM (default ~/.cache/icformer)
PROFILE_ENV = "ICFORMER_PROFILE"  # which profile the app and the CLI load
RESULTS_ENV = "ICFORMER_RESULTS"  # which results folder the app's dashboards read
SOURCE_COMMIT_ENV = "ICFORMER_SOURCE_COMMIT"  # overrides the git commit recorded in results
DEFAULT_PROFILE = "embedded"

ASSETS_DIR = Path(os.environ.get(ASSETS_ENV, REPO_DIR / "assets"))
CHECKPOINTS_DIR = ASSETS_DIR / "checkpoints"

# The embedded default keeps the paper's 4x ratio at a size 2 CPU cores can train:
# k=32 digests per chunk of L=128 tokens (the paper: k=128, L=512; docs/paper.md).
EMBEDDED_K = 32
EMBEDDED_L = 128

# Reconstruction decodes up to the context's own length plus this many tokens by default.
RECONSTRUCTION_MARGIN = 16


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` argument, else ``$ICFORMER_CACHE``, else ``~/.cache/icformer``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "icformer"
