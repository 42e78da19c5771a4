"""`python -m icformer evaluate`: the flags (derived from `EvalSettings`) and the command."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

import torch

from ..bench import with_icae
from ..evaluate.report import fmt
from ..evaluate.runner import run_evaluation
from ..evaluate.settings import EvalSettings
from .args import add_dataclass_arguments, add_model_args, compressor_from_args, dataclass_overrides


def default_command() -> str:
    """This process's command line as a user would type it (recorded in meta.json)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "__main__.py" and Path(argv[0]).parent.name == "icformer":
        return "python -m icformer " + shlex.join(argv[1:])
    return shlex.join(argv)


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    add_model_args(parser)
    parser.add_argument("--out", type=Path, default=None, help="results directory (default: assets/results)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="holds eval.jsonl and pretrain_valid.jsonl (default: the repository's data/)")
    parser.add_argument("--quick", action="store_true", help="a handful of samples, short generations (minutes)")
    add_dataclass_arguments(parser, EvalSettings)
    parser.add_argument("--bench-from", type=Path, default=None,
                        help="take the benchmark rows from this bench.json (written by `python -m icformer bench`) "
                             "if it exists when the benchmark section starts; otherwise measure")
    parser.add_argument("--icformer-no-pretrain", default="auto",
                        help="IC-Former checkpoint fine-tuned without pre-training (default: "
                             "assets/checkpoints/icformer-no-pretrain when present; 'none' to skip)")
    parser.add_argument("--no-icae", action="store_true",
                        help="without an ICAE checkpoint, skip ICAE instead of adding a seeded random one")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (fewer on a shared CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # a killed background run still writes a partial summary
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cc = compressor_from_args(args)
    if cc.icae is None and not args.no_icae:
        cc = with_icae(cc)
    overrides = dataclass_overrides(args, EvalSettings)
    if args.quick and "bench_quick" not in overrides and any(k.startswith("bench_") for k in overrides):
        overrides["bench_quick"] = False  # explicit benchmark sizes replace the quick preset's
    no_pretrain = None if str(args.icformer_no_pretrain).lower() == "none" else args.icformer_no_pretrain
    result = run_evaluation(cc, args.out, quick=args.quick, data_dir=args.data_dir, no_pretrain=no_pretrain,
                            bench_from=args.bench_from, command=default_command(), progress=not args.no_progress,
                            **overrides)
    print(f"wrote {result['out_dir']} ({result['meta']['status']}, {result['meta']['seconds'] / 60:.1f} min)")
    for row in result["tables"]["qa_summary"]:
        print(f"  qa {row['method']:<22} n={row['n']:<4} rougeL_f={fmt(row['rougeL_f'])} f1={fmt(row['f1'])}")
    for row in result["tables"]["reconstruction_by_length"]:
        print(f"  reconstruction {row['method']:<10} <= {row['length_bucket']:<4} bleu={fmt(row['bleu'])} "
              f"ce={fmt(row['ce'])}")
    return 0
