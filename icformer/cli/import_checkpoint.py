"""`python -m icformer import-checkpoint`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..convert import ICAE_RELEASE_LORA_ALPHA, convert_icae, convert_icformer, detect_format


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("source", type=Path, help="reference IC-Former checkpoint dir, or an ICAE v2 .safetensors file")
    parser.add_argument("--out", type=Path, required=True, help="directory to write config.json + model.safetensors")
    parser.add_argument("--format", choices=["auto", "icformer", "icae"], default="auto")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="L, context tokens per chunk (not stored in either release; default 512 / 4k)")
    parser.add_argument("--dtype", choices=["source", "float32", "bfloat16", "float16"], default="source",
                        help="IC-Former weights dtype in the output (default: keep the source's)")
    parser.add_argument("--lora-alpha", type=float, default=ICAE_RELEASE_LORA_ALPHA,
                        help="ICAE LoRA alpha (not stored in the release; its scripts use 32)")
    parser.add_argument("--llm", default=None, help="ICAE: load the result into this LLM as a check")
    parser.add_argument("--untrained", action="store_true", help="mark the result trained=False (e.g. a test file)")


def run(args: argparse.Namespace) -> int:
    kind = detect_format(args.source) if args.format == "auto" else args.format
    if kind == "icformer":
        dtype = None if args.dtype == "source" else getattr(torch, args.dtype)
        path, notes = convert_icformer(args.source, args.out, chunk_size=args.chunk_size or 512,
                                       trained=not args.untrained, dtype=dtype)
    else:
        path, notes = convert_icae(args.source, args.out, chunk_size=args.chunk_size, lora_alpha=args.lora_alpha,
                                   trained=not args.untrained, llm=args.llm)
    print(json.dumps({"format": kind, "output": str(path), "notes": notes}, indent=2))
    return 0
