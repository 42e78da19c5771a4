"""What is evaluated: the methods (a compressor, or the full context) and the QA rows built from them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..compressors.base import CompressorModel
from ..compressors.checkpoint import CONFIG_NAME
from ..compressor import ContextCompressor
from ..defaults import ASSETS_DIR
from ..llm import weights_fingerprint
from ..compressors import load_model
from ..prompts import prompt_style
from ..results import NO_PRETRAIN, NONE_FLOOR, SWAPPED

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Method:
    """A label in the results, the compressor instance that runs it, and its method name there."""

    label: str
    cc: ContextCompressor
    method: str  # "icformer" | "icae" | "full"

    @property
    def model(self) -> CompressorModel | None:
        return self.cc.model_for(self.method)

    @property
    def trained(self) -> bool:
        return True if self.model is None else bool(self.model.trained)

    @property
    def k(self) -> int | None:
        return None if self.model is None else int(self.model.config.num_digest_tokens)

    @property
    def L(self) -> int | None:  # noqa: N802
        return None if self.model is None else int(self.model.config.chunk_size)

    def fingerprint(self) -> str:
        """The weights' fingerprint, plus the prompt style when not the default (it changes every output)."""
        if self.model is None:
            return "none"
        style = prompt_style(self.model)
        return weights_fingerprint(self.model) + ("" if style == "default" else f"+{style}")


def default_results_dir() -> Path:
    return ASSETS_DIR / "results"


def default_no_pretrain_dir() -> Path:
    return ASSETS_DIR / "checkpoints" / NO_PRETRAIN


def load_no_pretrain(cc: ContextCompressor, path: str | Path | None, *,
                     required: bool = False) -> ContextCompressor | None:
    """IC-Former fine-tuned without pre-training, on `cc`'s LLM; None when absent or unfit."""
    if path is None or not (Path(path) / CONFIG_NAME).is_file():
        if required:
            raise FileNotFoundError(f"no IC-Former checkpoint at {path}")
        return None
    try:
        model = load_model(path, cc.target, "icformer")
    except ValueError as err:  # another hidden size, or not an IC-Former
        if required:
            raise
        warnings.warn(f"{err}: not evaluated", stacklevel=2)
        return None
    return cc.replacing(icformer=model, icae=None)


def resolve_no_pretrain(cc: ContextCompressor, no_pretrain: Any) -> ContextCompressor | None:
    """"auto" (the committed checkpoint when present), a checkpoint directory, a ContextCompressor or None."""
    if isinstance(no_pretrain, str) and no_pretrain == "auto":
        return load_no_pretrain(cc, default_no_pretrain_dir())
    if isinstance(no_pretrain, (str, Path)):
        return load_no_pretrain(cc, no_pretrain, required=True)
    return no_pretrain


def build_methods(cc: ContextCompressor, no_pretrain: ContextCompressor | None = None) -> dict[str, Method]:
    methods = {"icformer": Method("icformer", cc, "icformer")}
    if cc.icae is not None:
        methods["icae"] = Method("icae", cc, "icae")
    methods["full"] = Method("full", cc, "full")
    if no_pretrain is not None:
        methods[NO_PRETRAIN] = Method(NO_PRETRAIN, no_pretrain, "icformer")
    return methods


@dataclass(frozen=True)
class Variant:
    """A row of the QA tables: a method reading its own sample's context, or a no-information floor.

    `reads` is "own" (the method itself), "nothing" (`none`: the question alone, in the full
    context's prompt) or "partner" (`<method>-swapped`: the method's vectors of another context
    of the same task). A method's score minus its floors is what its vectors contribute.
    """

    label: str
    method: Method
    reads: str

    @property
    def kind(self) -> str:
        return "method" if self.reads == "own" else "floor"


def build_variants(methods: dict[str, Method]) -> list[Variant]:
    own = [Variant(label, m, "own") for label, m in methods.items()]
    floors = [Variant(NONE_FLOOR, methods["full"], "nothing")]
    floors += [Variant(label + SWAPPED, m, "partner") for label, m in methods.items() if m.model is not None]
    return own + floors
