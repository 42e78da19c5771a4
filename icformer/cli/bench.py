"""`python -m icformer bench`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..architecture import ARCHITECTURES, random_llm
from ..bench import (DECODE_TOKENS, DEFAULT_LENGTHS, DEFAULT_REPEATS, QUICK_DECODE_TOKENS, QUICK_LENGTHS, QUICK_REPEATS,
                     environment, format_table, run_benchmark, with_icae, write_results)
from ..compressor import ContextCompressor, build_compressor
from ..defaults import EMBEDDED_K, EMBEDDED_L
from ..spec import CompressorSpec
from .args import add_model_args, compressor_from_args


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    add_model_args(parser)
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help=f"context lengths in tokens (default: {' '.join(map(str, DEFAULT_LENGTHS))})")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 8")
    parser.add_argument("--repeats", type=int, default=None, help=f"timed runs per step (default {DEFAULT_REPEATS})")
    parser.add_argument("--quick", action="store_true",
                        help=f"lengths {' '.join(map(str, QUICK_LENGTHS))}, batch 1, {QUICK_REPEATS} repeats")
    parser.add_argument("--max-batch-tokens", type=int, default=None,
                        help="skip combinations whose batch size x length exceeds this")
    parser.add_argument("--decode-tokens", type=int, default=None,
                        help=f"tokens decoded per method at batch 1, for decode tokens/s (default {DECODE_TOKENS}, "
                             f"--quick {QUICK_DECODE_TOKENS}, 0: none)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; use fewer on a CPU shared with other jobs)")
    parser.add_argument("--random-weights", metavar="ARCH", default=None,
                        help="time shapes only, for machines without the weights: the LLM built with seeded random "
                             "weights from ARCH (an architecture directory, or one of: "
                             f"{', '.join(ARCHITECTURES)}), and random IC-Former and ICAE")
    parser.add_argument("--num-digest-tokens", type=int, default=EMBEDDED_K,
                        help="k of the random compressors (with --random-weights; the paper: 128)")
    parser.add_argument("--chunk-size", type=int, default=EMBEDDED_L,
                        help="L of the random compressors (with --random-weights; the paper: 512)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"), help="directory for bench.csv/json/html")
    parser.add_argument("--json", action="store_true", help="print the JSON results instead of the table")


def _random_compressor(args: argparse.Namespace) -> ContextCompressor:
    """`--random-weights`: a random-weight LLM of the named architecture and a seeded random IC-Former."""
    if args.llm or args.icformer or args.icae or args.profile:
        raise ValueError("--random-weights builds every model from the architecture; drop --llm/--icformer/--icae/--profile")
    spec = CompressorSpec(num_digest_tokens=args.num_digest_tokens, chunk_size=args.chunk_size)
    return build_compressor(spec, target=random_llm(args.random_weights, device=args.device))


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cc = with_icae(_random_compressor(args) if args.random_weights else compressor_from_args(args))
    say = lambda message: print(f"[bench] {message}", file=sys.stderr, flush=True)  # noqa: E731
    rows = run_benchmark(cc, args.lengths, args.batch_sizes, args.repeats, quick=args.quick,
                         max_batch_tokens=args.max_batch_tokens, decode_tokens=args.decode_tokens,
                         progress=say)
    meta = environment(cc)
    paths = write_results(rows, meta, args.out)
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
    else:
        print(format_table(rows))
        print(f"\n{meta['device_name']} ({meta['device']}, {meta['dtype']}, {meta['threads']} threads), "
              f"torch {meta['torch']}, commit {meta['git_commit']}{' (dirty)' if meta['git_dirty'] else ''}")
    say("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
