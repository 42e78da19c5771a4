"""Argument helpers every verb shares: the model flags, and flags derived from a settings dataclass."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..compressor import ContextCompressor, build_compressor, load_profile
from ..defaults import METHODS, PROFILE_ENV
from ..spec import CompressorSpec


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--llm/--icformer/--icae name a compressor piece by piece; --profile names a setting."""
    parser.add_argument("--llm", default=None, help="HF id, local dir or .gguf (default: embedded SmolLM2)")
    parser.add_argument("--icformer", default=None, help="IC-Former checkpoint dir (default: assets/)")
    parser.add_argument("--icae", default=None, help="ICAE checkpoint dir (default: assets/)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--profile", default=None, help=f"embedded (default) or paper; env {PROFILE_ENV}")


def compressor_from_args(args: argparse.Namespace) -> ContextCompressor:
    """The compressor the model flags name: a profile (None: $ICFORMER_PROFILE), or the pieces given."""
    if args.llm is None and args.icformer is None and args.icae is None:
        return load_profile(args.profile, device=args.device)
    if args.profile is not None:
        raise ValueError("pass either --profile or --llm/--icformer/--icae, not both")
    return build_compressor(CompressorSpec(llm=args.llm, icformer=args.icformer, icae=args.icae, device=args.device))


def add_method_arg(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument("--method", default=default, choices=list(METHODS))


def flag_name(field_name: str, renames: dict[str, str]) -> str:
    return renames.get(field_name, "--" + field_name.replace("_", "-"))


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, renames: dict[str, str] | None = None,
                       skip: tuple[str, ...] = (), helps: dict[str, str] | None = None) -> None:
    """One flag per field of `cls` (default None: "not given", so presets and files can fill it).

    Booleans get --x / --no-x; int, float and str fields parse as such; `renames` maps a field to
    another flag (e.g. out_dir -> --out)."""
    renames, helps = renames or {}, helps or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag, kind = flag_name(f.name, renames), str(f.type)
        if kind == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=helps.get(f.name))
            continue
        parse = {"int": int, "float": float}.get(kind.split(" ")[0], str)
        parser.add_argument(flag, dest=f.name, type=parse, default=None, help=helps.get(f.name))


def dataclass_overrides(args: argparse.Namespace, cls: type, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of `cls` the flags set (None: not given)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.name not in skip and getattr(args, f.name, None) is not None}
