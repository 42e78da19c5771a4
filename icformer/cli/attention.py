"""`python -m icformer attention`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from ..attention import BAND_WINDOW, _read_text, analyse_ids
from ..defaults import ASSETS_DIR, CHECKPOINTS_DIR


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("checkpoints", nargs="*", type=Path,
                        help="IC-Former checkpoint dirs (default: assets/checkpoints/icformer and icformer-no-pretrain)")
    parser.add_argument("--texts", nargs="+", type=Path, default=None,
                        help="text or example .json files (default: assets/examples/*.json); the first chunk of each")
    parser.add_argument("--llm", default=None, help="HF id, local dir or .gguf (default: embedded SmolLM2)")
    parser.add_argument("--window", type=int, default=BAND_WINDOW, help="band width in tokens")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")


def run(args: argparse.Namespace) -> int:
    from ..llm import load_llm
    from ..compressors import load_model

    checkpoints = args.checkpoints or [CHECKPOINTS_DIR / n for n in ("icformer", "icformer-no-pretrain")]
    texts = args.texts or sorted((ASSETS_DIR / "examples").glob("*.json"))
    names = [path.name for path in checkpoints]
    if len(set(names)) < len(names):  # same folder name in two places: tell them apart by path
        names = [str(path) for path in checkpoints]
    target = load_llm(args.llm, device="cpu")
    models = {name: load_model(path, target, "icformer").eval() for name, path in zip(names, checkpoints)}
    contexts = [target.tokenizer(_read_text(t), add_special_tokens=False)["input_ids"] for t in texts]
    results = {}
    for name, model in models.items():
        results[name] = {"trained": model.trained, "texts": len(contexts),
                         "layers": [asdict(s) for s in analyse_ids(target, model, contexts, args.window)]}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"Digest attention over the first chunk of {len(texts)} text(s); band = {args.window} consecutive tokens")
    width = max(len("checkpoint"), *(len(name) for name in results))
    print(f"{'checkpoint':<{width}} trained  layer  order_corr  in_order  window_mass (uniform)  context_mass")
    for name, result in results.items():
        for layer, s in enumerate(result["layers"], 1):
            print(f"{name:<{width}} {'yes' if result['trained'] else 'no':>7} {layer:>6}  "
                  f"{s['order_correlation']:>10.3f}  {s['in_order']:>8.3f}  {s['window_mass']:>11.3f} ({s['uniform_window_mass']:.3f})  {s['context_mass']:>12.3f}")
    return 0
