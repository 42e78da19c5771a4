"""What every task of one evaluation run shares: the compressor, the folders, the settings, the methods."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from ..compressor import ContextCompressor
from ..files import read_jsonl
from .methods import Method, Variant, build_variants
from .settings import EvalSettings
from .windows import TextSource


@dataclass
class Workspace:
    """One run's inputs, plus `counts` (what each section planned and reused, for meta.json) and
    `checkpoint`, which the tasks call after each batch so the files stay current."""

    cc: ContextCompressor
    out: Path
    data_dir: Path
    settings: EvalSettings
    methods: dict[str, Method]
    progress: bool = True
    counts: dict[str, str] = field(default_factory=dict)
    checkpoint: Callable[[], None] = lambda: None
    _text: TextSource | None = None

    def __post_init__(self) -> None:
        self.variants: list[Variant] = build_variants(self.methods)
        self.fingerprints = {label: m.fingerprint() for label, m in self.methods.items()}

    @property
    def compressors(self) -> dict[str, Method]:
        """The methods reconstruction and the benchmark measure: the two compressors of `cc`."""
        return {k: m for k, m in self.methods.items() if k in ("icformer", "icae")}

    @property
    def randomness_length(self) -> int:
        return self.settings.randomness_length or self.cc.icformer.config.chunk_size

    def bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, disable=not self.progress, mininterval=2.0, dynamic_ncols=True,
                    file=sys.stderr)

    def has(self, name: str) -> bool:
        return (self.data_dir / name).is_file()

    def data(self, name: str) -> Path:
        """A data file's path; raises naming the command that writes it when absent."""
        path = self.data_dir / name
        if not path.is_file():
            raise FileNotFoundError(
                f"no {name} in {self.data_dir}: run `python -m icformer prepare-data --out {self.data_dir}`")
        return path

    def text_source(self) -> TextSource:
        if self._text is None:
            self._text = TextSource(read_jsonl(self.data("pretrain_valid.jsonl")), self.cc.tokenizer)
        return self._text

    def relative(self, path: Path) -> str:
        """`path` as seen from the results folder, when it lies inside it."""
        try:
            return str(Path(path).resolve().relative_to(self.out.resolve()))
        except ValueError:
            return str(path)
