"""`python -m icformer compress | answer | reconstruct`: the entry point's three calls from a shell."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..context import CompressedContext
from .args import add_method_arg, add_model_args, compressor_from_args


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    add_model_args(parser)
    if verb == "compress":
        parser.add_argument("input", type=Path, help="text file with the context")
        parser.add_argument("-o", "--output", type=Path, required=True, help="where to write .safetensors")
        add_method_arg(parser, "icformer")
        return
    parser.add_argument("context", type=Path, help=".safetensors compressed context or a text file")
    add_method_arg(parser, None)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--no-repeat-ngram", type=int, default=0, metavar="N",
                        help="never repeat an N-gram of the new text (0: plain greedy, the paper's decoding)")
    if verb == "answer":
        parser.add_argument("question")


def _load_context(path: Path) -> CompressedContext | bytes:
    return CompressedContext.load(path) if path.suffix == ".safetensors" else path.read_bytes()


def run(args: argparse.Namespace) -> int:
    cc = compressor_from_args(args)
    if args.verb == "compress":
        z = cc.compress(args.input.read_bytes(), method=args.method)
        z.save(args.output)
        print(json.dumps({"output": str(args.output), "num_tokens": z.num_tokens, "num_vectors": z.num_vectors,
                          "timings": z.timings, "trained": z.trained}, indent=2))
        return 0
    context = _load_context(args.context)
    if args.verb == "answer":
        result = cc.answer(context, args.question, method=args.method, max_new_tokens=args.max_new_tokens,
                           no_repeat_ngram=args.no_repeat_ngram)
    else:
        result = cc.reconstruct(context, method=args.method, max_new_tokens=args.max_new_tokens,
                                no_repeat_ngram=args.no_repeat_ngram)
    print(result.text)
    print(json.dumps({"method": result.method, "timings": result.timings, "trained": result.trained}), file=sys.stderr)
    return 0
