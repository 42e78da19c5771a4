"""`python -m icformer profiles`."""

from __future__ import annotations

import argparse
import json

from ..defaults import DEFAULT_PROFILE, PROFILE_ENV
from ..profiles import availability, list_profiles


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("--json", action="store_true", help="print the profiles as JSON")


def run(args: argparse.Namespace) -> int:
    rows = list_profiles()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        mark = "*" if row["default"] else " "
        print(f"{mark} {row['name']:<10} {availability(row):<22} {row['description']}")
        for missing in row["missing"]:
            print(f"      missing: {missing}")
    print(f"\n* = selected (--profile NAME or ${PROFILE_ENV}; default {DEFAULT_PROFILE!r})")
    return 0
