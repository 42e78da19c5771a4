"""`python -m icformer train`: every TrainConfig field is a flag; a preset and a YAML file fill the rest."""

from __future__ import annotations

import argparse
import json

from ..train import PRESETS_DIR, TrainConfig, train
from .args import add_dataclass_arguments, dataclass_overrides

RENAMES = {"out_dir": "--out"}


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("--preset", default=None, help=f"named settings in {PRESETS_DIR}: paper-*, cpu-*")
    parser.add_argument("--config", default=None, help="a YAML file of TrainConfig fields")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    add_dataclass_arguments(parser, TrainConfig, flags=RENAMES)


def run(args: argparse.Namespace) -> int:
    config = TrainConfig.from_sources(args.preset, args.config, **dataclass_overrides(args, TrainConfig))
    print(json.dumps(train(config, resume=args.resume)))
    return 0
