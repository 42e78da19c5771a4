"""`python -m icformer.cli.lease <verb>`: the shipments scripts/gpu_train.sh sends through a GPU lease
(icformer/lease.py): size, pack, check, unpack, bundle, unbundle."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..lease import MIB, manifest, bundle, missing_parts, pack, tree_bytes, unbundle, unpack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m icformer.cli.lease", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("size")
    p = verbs.add_parser("pack")
    p.add_argument("out_dir", type=Path)
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--room-mib", type=float, required=True)
    verbs.add_parser("check").add_argument("lease_dir", type=Path)
    for verb, first, second in (("unpack", "lease_dir", "dest"), ("bundle", "source", "out_dir"),
                                ("unbundle", "out_dir", "dest")):
        p = verbs.add_parser(verb)
        p.add_argument(first, type=Path)
        p.add_argument(second, type=Path)
    args = parser.parse_args(argv)
    if args.verb == "size":
        print(tree_bytes())
    elif args.verb == "pack":
        print(json.dumps(pack(args.files, args.out_dir, int(args.room_mib * MIB))["shipments"]))
    elif args.verb == "check":
        missing = missing_parts(args.lease_dir)
        total = manifest(args.lease_dir)["shipments"]
        print(f"shipments here: {sorted(set(range(1, total + 1)) - set(missing))} of {total}"
              + (f"; missing or damaged: {sorted(missing)}" if missing else ""))
    elif args.verb == "unpack":
        for path in unpack(args.lease_dir, args.dest):
            print(path)
    elif args.verb == "bundle":
        record = bundle(args.source, args.out_dir)
        print(f"{len(record['parts'])} parts, {record['bytes'] / MIB:.1f} MiB")
    else:
        print(unbundle(args.out_dir, args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
