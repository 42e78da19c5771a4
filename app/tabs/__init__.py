"""One module per tab of the page, each with its layout (``layout``), its wiring (``wire``) and
its handlers, which return named outputs (`common.View` dataclasses). A new tab goes here."""

from .about import AboutTab
from .common import Runner, Shared
from .compress import CompressTab
from .evaluation import EvaluationTab
from .reconstruct import ReconstructTab
from .speed import SpeedTab

__all__ = ["AboutTab", "CompressTab", "EvaluationTab", "ReconstructTab", "Runner", "Shared", "SpeedTab"]
