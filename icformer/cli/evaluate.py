"""`python -m icformer evaluate`."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..evaluate import SECTIONS, EvalSettings, _fmt, default_command, run_evaluation
from .args import add_model_args, compressor_from_args


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    add_model_args(parser)
    d = EvalSettings()
    parser.add_argument("--out", type=Path, default=None, help="results directory (default: assets/results)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="holds eval.jsonl and pretrain_valid.jsonl (default: the repository's data/)")
    parser.add_argument("--quick", action="store_true", help="a handful of samples, short generations (minutes)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=None, help="default: all")
    parser.add_argument("--qa-samples", type=int, default=None, help=f"questions (default {d.qa_samples})")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help=f"QA generation limit (default {d.max_new_tokens})")
    parser.add_argument("--qa-max-context-tokens", type=int, default=None,
                        help=f"longest QA context (default {d.qa_max_context_tokens})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"prompts decoded together (default {d.batch_size})")
    parser.add_argument("--reconstruction-max-new-tokens", type=int, default=None,
                        help=f"reconstruction generation cap, the prefix scored (default "
                             f"{d.reconstruction_max_new_tokens})")
    parser.add_argument("--length-buckets", type=int, nargs="+", default=None,
                        help=f"bucket upper edges in tokens (default {' '.join(map(str, d.length_buckets))})")
    parser.add_argument("--length-samples", type=int, default=None,
                        help=f"windows per bucket (default {d.length_samples})")
    parser.add_argument("--randomness-samples", type=int, default=None,
                        help=f"sequences per randomness kind (default {d.randomness_samples})")
    parser.add_argument("--randomness-length", type=int, default=None, help="tokens (default: the chunk size L)")
    parser.add_argument("--bench-lengths", type=int, nargs="+", default=None,
                        help=f"default {' '.join(map(str, d.bench_lengths))}")
    parser.add_argument("--bench-batch-sizes", type=int, nargs="+", default=None,
                        help=f"default {' '.join(map(str, d.bench_batch_sizes))}")
    parser.add_argument("--bench-repeats", type=int, default=None,
                        help=f"timed runs per step (default {d.bench_repeats})")
    parser.add_argument("--bench-max-batch-tokens", type=int, default=None,
                        help=f"skip bigger batch x length (default {d.bench_max_batch_tokens})")
    parser.add_argument("--bench-from", type=Path, default=None,
                        help="take the benchmark rows from this bench.json (written by `python -m icformer bench`) "
                             "if it exists when the benchmark section starts; otherwise measure")
    parser.add_argument("--seed", type=int, default=None, help="questions and text windows drawn (default 0)")
    parser.add_argument("--icformer-no-pretrain", default="auto",
                        help="IC-Former checkpoint fine-tuned without pre-training (default: "
                             "assets/checkpoints/icformer-no-pretrain when present; 'none' to skip)")
    parser.add_argument("--no-icae", action="store_true",
                        help="without an ICAE checkpoint, skip ICAE instead of adding a seeded random one")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (fewer on a shared CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # a killed background run still writes a partial summary
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cc = compressor_from_args(args)
    if cc.icae is None and not args.no_icae:
        from ..bench import with_icae

        cc = with_icae(cc)
    overrides = {
        name: value for name, value in (
            ("sections", args.sections and tuple(args.sections)), ("qa_samples", args.qa_samples),
            ("max_new_tokens", args.max_new_tokens), ("qa_max_context_tokens", args.qa_max_context_tokens),
            ("batch_size", args.batch_size), ("reconstruction_max_new_tokens", args.reconstruction_max_new_tokens),
            ("length_buckets", args.length_buckets and tuple(args.length_buckets)),
            ("length_samples", args.length_samples), ("randomness_samples", args.randomness_samples),
            ("randomness_length", args.randomness_length),
            ("bench_lengths", args.bench_lengths and tuple(args.bench_lengths)),
            ("bench_batch_sizes", args.bench_batch_sizes and tuple(args.bench_batch_sizes)),
            ("bench_repeats", args.bench_repeats), ("bench_max_batch_tokens", args.bench_max_batch_tokens),
            ("seed", args.seed),
        ) if value is not None
    }
    if args.quick and any(k.startswith("bench_") and k != "bench_quick" for k in overrides):
        overrides["bench_quick"] = False
    no_pretrain = None if str(args.icformer_no_pretrain).lower() == "none" else args.icformer_no_pretrain
    result = run_evaluation(cc, args.out, quick=args.quick, data_dir=args.data_dir, no_pretrain=no_pretrain,
                            bench_from=args.bench_from, command=default_command(), progress=not args.no_progress,
                            **overrides)
    print(f"wrote {result['out_dir']} ({result['meta']['status']}, {result['meta']['seconds'] / 60:.1f} min)")
    for row in result["tables"]["qa_summary"]:
        print(f"  qa {row['method']:<22} n={row['n']:<4} rougeL_f={_fmt(row['rougeL_f'])} f1={_fmt(row['f1'])}")
    for row in result["tables"]["reconstruction_by_length"]:
        print(f"  reconstruction {row['method']:<10} <= {row['length_bucket']:<4} bleu={_fmt(row['bleu'])} "
              f"ce={_fmt(row['ce'])}")
    return 0
