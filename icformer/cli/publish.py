"""`python -m icformer publish`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..defaults import ASSETS_DIR
from ..publish import FINAL_RUNS, publish, republish


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("--runs", type=Path, default=Path("runs/default"), help="where scripts/train_default.sh trained")
    parser.add_argument("--assets", type=Path, default=ASSETS_DIR, help="writes <assets>/checkpoints/<name>/")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--only", nargs="+", default=None, choices=sorted(FINAL_RUNS))
    parser.add_argument("--samples", type=int, default=8, help="held-out windows for the reconstruction BLEU")
    parser.add_argument("--device", default=None)
    parser.add_argument("--bundle", type=Path, default=None,
                        help="the files of `scripts/gpu_train.sh run` (bundle.json + parts): checked, unpacked "
                             "into --runs (which must not exist yet), then published")
    parser.add_argument("--republish", action="store_true",
                        help="rewrite the checkpoints already in <assets> from their own cards (bf16 weights, "
                             "fresh card), without their runs")


def run(args: argparse.Namespace) -> int:
    if args.republish:
        cards = republish(args.assets, args.data_dir, args.only, samples=args.samples, device=args.device)
    else:
        if args.bundle is not None:
            from ..lease import unbundle

            unbundle(args.bundle, args.runs)
        cards = publish(args.runs, args.assets, args.data_dir, args.only, samples=args.samples, device=args.device)
    for name, card in cards.items():
        bleu = (card["heldout_reconstruction"] or {}).get("bleu")
        print(f"{name}: {args.assets / 'checkpoints' / name}  held-out BLEU {'n/a' if bleu is None else f'{bleu:.4f}'}")
    return 0
