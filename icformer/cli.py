"""`python -m icformer <verb>`: a thin command line over the library's functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

VERBS: dict[str, tuple[str, str]] = {
    # verb: (module with add_arguments(parser, verb) and run(args) -> exit code, help)
    "compress": ("icformer.cli", "compress a text file into a .safetensors compressed context"),
    "answer": ("icformer.cli", "answer a question from a compressed context (or a text file)"),
    "reconstruct": ("icformer.cli", "decode a compressed context back into text"),
    "prepare-data": ("icformer.data", "build the training/evaluation data from registry packages"),
    "train": ("icformer.train", "pre-train or fine-tune IC-Former / ICAE (accelerate)"),
    "bench": ("icformer.bench", "time IC-Former vs ICAE compression against a full-context prefill"),
    "evaluate": ("icformer.evaluate", "paper-style evaluation (QA, reconstruction, speed) into assets/results/"),
    "publish": ("icformer.publish", "copy finished training runs into assets/checkpoints/ with model cards"),
    "diagnose": ("icformer.diagnose", "learning gates: memorise one window, swap gap on held-out windows, locality"),
    "attention": ("icformer.attention", "the paper's attention analysis: do digests read the context in order?"),
    "profiles": ("icformer.profiles", "list the model profiles (embedded, paper) and what each is missing"),
    "import-checkpoint": ("icformer.convert", "convert a reference IC-Former or ICAE v2 release into this format"),
}


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llm", default=None, help="HF id, local dir or .gguf (default: embedded SmolLM2)")
    parser.add_argument("--icformer", default=None, help="IC-Former checkpoint dir (default: assets/)")
    parser.add_argument("--icae", default=None, help="ICAE checkpoint dir (default: assets/)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--profile", default=None, help="embedded (default) or paper; env ICFORMER_PROFILE")


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    _model_args(parser)
    if verb == "compress":
        parser.add_argument("input", type=Path, help="text file with the context")
        parser.add_argument("-o", "--output", type=Path, required=True, help="where to write .safetensors")
        parser.add_argument("--method", default="icformer", choices=["icformer", "icae", "full"])
    else:
        parser.add_argument("context", type=Path, help=".safetensors compressed context or a text file")
        parser.add_argument("--method", default=None, choices=["icformer", "icae", "full"])
        parser.add_argument("--max-new-tokens", type=int, default=256)
        if verb == "answer":
            parser.add_argument("question")


def _compressor(args):
    from .compressor import build_compressor, load_profile
    from .spec import CompressorSpec

    if args.llm is None and args.icformer is None and args.icae is None:
        return load_profile(getattr(args, "profile", None), device=args.device)  # None: $ICFORMER_PROFILE
    if getattr(args, "profile", None) is not None:
        raise ValueError("pass either --profile or --llm/--icformer/--icae, not both")
    return build_compressor(CompressorSpec(llm=args.llm, icformer=args.icformer, icae=args.icae, device=args.device))


def _load_context(path: Path):
    from .context import CompressedContext

    if path.suffix == ".safetensors":
        return CompressedContext.load(path)
    return path.read_bytes()


def run(args: argparse.Namespace) -> int:
    cc = _compressor(args)
    if args.verb == "compress":
        z = cc.compress(args.input.read_bytes(), method=args.method)
        z.save(args.output)
        print(json.dumps({"output": str(args.output), "num_tokens": z.num_tokens, "num_vectors": z.num_vectors,
                          "timings": z.timings, "trained": z.trained}, indent=2))
        return 0
    context = _load_context(args.context)
    if args.verb == "answer":
        result = cc.answer(context, args.question, method=args.method, max_new_tokens=args.max_new_tokens)
    else:
        result = cc.reconstruct(context, method=args.method, max_new_tokens=args.max_new_tokens)
    print(result.text)
    print(json.dumps({"method": result.method, "timings": result.timings, "trained": result.trained}), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    import importlib

    parser = argparse.ArgumentParser(prog="python -m icformer", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb, (module_name, help_text) in VERBS.items():
        module = importlib.import_module(module_name)
        sp = sub.add_parser(verb, help=help_text)
        module.add_arguments(sp, verb)
        sp.set_defaults(module=module_name)
    args = parser.parse_args(argv)
    module = importlib.import_module(args.module)
    try:
        return module.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
