"""The Gradio demo for IC-Former context compression (``python app.py``).

``build_demo(compressor_factory=...)`` returns the ``gr.Blocks``; the factory returns an
``icformer.ContextCompressor`` (default: the embedded SmolLM2 model). All model work is done
by the ``icformer`` library; this package only lays out, validates and formats.
"""

from .ui import CSS, TITLE, build_demo, theme

__all__ = ["CSS", "TITLE", "build_demo", "theme"]
