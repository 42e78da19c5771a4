"""The on-disk checkpoint both compressors share: ``config.json`` (with ``"method"``) beside
``model.safetensors`` (the weights, plus ``trained`` and the training record as metadata).

One writer and one reader, so IC-Former, ICAE and checkpoints converted from the reference
releases (convert.py) are the same format and cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..defaults import METHOD_NAMES

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class Checkpoint:
    """A checkpoint's contents: the config values (``method`` included), weights and trained flag."""

    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    trained: bool

    @property
    def method(self) -> str:
        return self.config["method"]


def save_checkpoint(directory: str | Path, method: str, config: dict[str, Any],
                    state_dict: dict[str, torch.Tensor], *, trained: bool, **record: Any) -> Path:
    """Write a checkpoint; `record` (what made it: run, step, samples) goes into the metadata."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps({"method": method, **config}, indent=2) + "\n")
    metadata = {"method": method, "trained": json.dumps(bool(trained)), "record": json.dumps(record)}
    state = {name: t.detach().contiguous().cpu() for name, t in state_dict.items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata=metadata)
    return directory


def checkpoint_method(directory: str | Path, expected: str | None = None) -> str:
    """Which compressor a checkpoint holds, refusing a folder that is not one (a clear error, not a KeyError)."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
        what = f"an {METHOD_NAMES.get(expected, expected)}" if expected else "a compressor"
        raise FileNotFoundError(f"{directory} is not {what} checkpoint (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    return json.loads((directory / CONFIG_NAME).read_text()).get("method", "icformer")


def load_checkpoint(directory: str | Path, method: str, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint of `method`; a checkpoint of another method is refused by name.

    Checkpoints written before "method" was recorded are IC-Former's."""
    directory = Path(directory)
    found = checkpoint_method(directory, method)
    if found != method:
        raise ValueError(f"{directory} holds a {found!r} checkpoint, not {method!r}")
    config = json.loads((directory / CONFIG_NAME).read_text())
    trained = read_checkpoint_metadata(directory / WEIGHTS_NAME).get("trained") == "true"
    return Checkpoint(config, load_file(str(directory / WEIGHTS_NAME), device=str(device)), trained)


def read_checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of a weights file (method, trained, record)."""
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})
