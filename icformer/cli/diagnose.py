"""`python -m icformer diagnose`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..defaults import CHECKPOINTS_DIR
from ..diagnose import format_logged, format_results, held_out_windows, logged_gates, run_gates


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("--icformer", default=None, help="IC-Former checkpoint (default: assets/checkpoints/icformer)")
    parser.add_argument("--llm", default=None, help="HF id, local dir or .gguf (default: embedded SmolLM2)")
    parser.add_argument("--data-dir", default="data", help="prepare-data output: held-out windows from pretrain_valid")
    parser.add_argument("--samples", type=int, default=16, help="held-out windows for the context-use gate")
    parser.add_argument("--length", type=int, default=None,
                        help="tokens per held-out window (default: one chunk); longer windows span several chunks")
    parser.add_argument("--steps", type=int, default=80, help="memorise gate: AdamW steps per method")
    parser.add_argument("--threshold", type=float, default=1.0, help="memorise gate: loss to reach (nats/token)")
    parser.add_argument("--lr", type=float, default=1e-3, help="memorise gate: IC-Former learning rate")
    parser.add_argument("--free-lr", type=float, default=1e-2, help="memorise gate: free vectors' learning rate")
    parser.add_argument("--gates", nargs="+", default=["memorise", "context", "locality"],
                        choices=["memorise", "context", "locality"])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--runs", nargs="+", type=Path, default=None,
                        help="instead of gates: the swap gap logged by these training runs, as one table")


def run(args: argparse.Namespace) -> int:
    if args.runs:
        rows = logged_gates(args.runs)
        print(json.dumps(rows, indent=2) if args.json else format_logged(rows))
        return 0
    from ..llm import load_llm
    from ..compressors import load_model

    target = load_llm(args.llm, device="cpu", dtype=torch.float32)
    icformer = load_model(args.icformer or CHECKPOINTS_DIR / "icformer", target, "icformer")
    icformer.requires_grad_(False)
    windows = held_out_windows(target, args.data_dir, args.samples, args.length or icformer.config.chunk_size)
    results = run_gates(target, icformer, windows, args)
    print(json.dumps(results, indent=2) if args.json else format_results(results))
    return 0
