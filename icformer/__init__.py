"""IC-Former: lightning-fast context compression for LLMs (Wang et al., EMNLP 2024 Findings)."""

from .compressor import ContextCompressor, UntrainedWarning, build_compressor, load_profile
from .context import CompressedContext
from .generation import Answer
from .compressors.modeling_icformer import ICFormerConfig, ICFormerModel
from .spec import CompressorSpec

__all__ = [
    "Answer",
    "CompressedContext",
    "CompressorSpec",
    "ContextCompressor",
    "ICFormerConfig",
    "ICFormerModel",
    "UntrainedWarning",
    "build_compressor",
    "load_profile",
]
__version__ = "0.1.0"
