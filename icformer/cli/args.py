"""Argument helpers every verb shares: the model flags, and flags derived from a settings dataclass.

`add_dataclass_arguments` adds ``--<field-name>`` per field (``bool``: ``--x/--no-x``; ``tuple[T, ...]``:
one or more T; ``T | None``: T), every default None so that only flags given on the command line
override; `dataclass_overrides` reads them back. A field's ``metadata={"help": ..., "choices": ...}``
gives its help text and allowed values, so a new setting is a new flag without a second list.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Iterable, Mapping

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


def _field_type(annotation: Any) -> tuple[Any, bool]:
    """(element type, is a tuple) of a field annotation, an Optional stripped."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _flags(cls: type, skip: Iterable[str]) -> list[tuple[dataclasses.Field, Any, bool]]:
    hints = typing.get_type_hints(cls)
    return [(f, *_field_type(hints[f.name])) for f in dataclasses.fields(cls) if f.name not in set(skip)]


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: Iterable[str] = (),
                            flags: Mapping[str, str] | None = None) -> None:
    """One flag per field of dataclass `cls` but those in `skip`; `flags` renames some ({field: "--flag"})."""
    defaults = cls()
    for f, kind, is_tuple in _flags(cls, skip):
        flag = (flags or {}).get(f.name, "--" + f.name.replace("_", "-"))
        default = getattr(defaults, f.name)
        shown = " ".join(map(str, default)) if is_tuple else default
        text = f.metadata.get("help")
        help_text = f"{text} (default {shown})" if text and default is not None else text
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
            continue
        parser.add_argument(flag, dest=f.name, type=kind if kind in (int, float) else str, default=None,
                            nargs="+" if is_tuple else None, choices=f.metadata.get("choices"), help=help_text)


def dataclass_overrides(args: argparse.Namespace, cls: type, *, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of `cls` given on the command line (tuples as tuples); flags not given are left out."""
    out = {}
    for f, _, is_tuple in _flags(cls, skip):
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = tuple(value) if is_tuple else value
    return out
