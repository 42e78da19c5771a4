"""IC-Former: lightning-fast context compression for LLMs (Wang et al., EMNLP 2024 Findings)."""

from .compressor import ContextCompressor, UntrainedWarning
from .context import CompressedContext
from .generation import Answer
from .modeling_icformer import ICFormerConfig, ICFormerModel

__all__ = [
    "Answer",
    "CompressedContext",
    "ContextCompressor",
    "ICFormerConfig",
    "ICFormerModel",
    "UntrainedWarning",
]
__version__ = "0.1.0"
