"""`python -m icformer prepare-data`."""

from __future__ import annotations

from pathlib import Path

from ..data import prepare_data


def add_arguments(parser, verb: str) -> None:
    """`python -m icformer prepare-data`: flags for :func:`prepare_data`."""
    parser.add_argument("--out", type=Path, default=Path("data"), help="output dir (not committed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sources-dir", type=Path, default=None, help="download cache (default: OUT/sources)")
    parser.add_argument("--max-rows", type=int, default=None, help="cap rows per output file (quick runs)")


def run(args) -> int:
    manifest = prepare_data(args.out, seed=args.seed, sources_dir=args.sources_dir, max_rows=args.max_rows)
    for name, info in manifest["outputs"].items():
        print(f"{name}: {info['rows']} rows, sha256 {info['sha256'][:12]}")
    return 0
