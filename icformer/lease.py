"""Moving files through a GPU lease's size limits (scripts/gpu_train.sh).

Each call to the lent machine sends the whole working tree and refuses more than 64 MiB, and at
most 8 files of 16 MiB each come back. So what the machine lacks (the embedded LLM's GGUF, the
training data, wheels) is cut into parts and packed into shipments, each sized to the room the
tree leaves in one call, carried in calls made back to back while the machine stays warm; what
comes back is one tar cut into parts. A manifest of sha256s travels with both, so either end
rebuilds the files and refuses any part that is missing or differs.

    python -m icformer.cli.lease size                          # MiB the tree sends before any carry
    python -m icformer.cli.lease pack DIR --room-mib R FILE..  # DIR/ship-N/ + DIR/meta/manifest.json
    python -m icformer.cli.lease check DIR                     # which shipments have arrived
    python -m icformer.cli.lease unpack DIR DEST               # rebuild every file into DEST
    python -m icformer.cli.lease bundle SRC OUT                # SRC as OUT/bundle.tar.partNN + bundle.json
    python -m icformer.cli.lease unbundle OUT DEST             # and back
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from .files import sha256_file

MIB = 1 << 20
CALL_LIMIT = 64 * MIB  # the working tree one device call may send, carried paths included
RETURN_FILE_LIMIT = 16 * MIB  # each file that comes back from $OUT
RETURN_FILES = 8
MANIFEST = "manifest.json"
BUNDLE = "bundle.json"


def tree_bytes(root: str | Path = ".") -> int:
    """Bytes a call sends before any carry: tracked files and untracked ones git does not ignore."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=root, capture_output=True, check=True).stdout
    paths = {Path(root) / p for p in listing.decode().split("\0") if p}
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def _copy_range(source: Path, dest: Path, start: int, size: int) -> str:
    """Copy `size` bytes of `source` from `start` into `dest`; returns their sha256."""
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(dest, "wb") as out:
        src.seek(start)
        left = size
        while left:
            chunk = src.read(min(left, 4 * MIB))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def pack(files: list[Path], out_dir: Path, room: int) -> dict:
    """Cut `files` into shipments of at most `room` bytes each: out_dir/ship-N/<name>.partK.

    Files fill shipments in the order given (so the run's own last shipment carries the tail);
    out_dir/meta/manifest.json names every part, its shipment and sha256.
    """
    if room < MIB:
        raise ValueError(f"{room / MIB:.1f} MiB of room per call is too little to ship anything")
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ValueError(f"two files to ship share a name: {names}")
    shutil.rmtree(out_dir, ignore_errors=True)
    (out_dir / "meta").mkdir(parents=True)
    entries, ship, used = [], 1, 0
    for path in files:
        size, start, parts = path.stat().st_size, 0, []
        while start < size or not parts:
            if used == room:
                ship, used = ship + 1, 0
            take = min(size - start, room - used)
            part = out_dir / f"ship-{ship}" / f"{path.name}.part{len(parts)}"
            part.parent.mkdir(exist_ok=True)
            parts.append(dict(file=f"ship-{ship}/{part.name}", bytes=take, sha256=_copy_range(path, part, start, take)))
            start, used = start + take, used + take
        entries.append(dict(name=path.name, bytes=size, sha256=sha256_file(path), parts=parts))
    manifest = dict(shipments=ship, room_bytes=room, files=entries)
    (out_dir / "meta" / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def manifest(lease_dir: Path) -> dict:
    path = lease_dir / "meta" / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: run `bash scripts/gpu_train.sh prepare` and carry its meta folder")
    return json.loads(path.read_text())


def missing_parts(lease_dir: Path) -> dict[int, list[str]]:
    """Shipment number -> its parts that are absent or differ from the manifest (empty: all here)."""
    missing: dict[int, list[str]] = {}
    for entry in manifest(lease_dir)["files"]:
        for part in entry["parts"]:
            path = lease_dir / part["file"]
            if not path.is_file() or path.stat().st_size != part["bytes"] or sha256_file(path) != part["sha256"]:
                missing.setdefault(int(part["file"].split("/")[0].split("-")[1]), []).append(part["file"])
    return missing


def unpack(lease_dir: Path, dest: Path) -> list[Path]:
    """Rebuild every shipped file into `dest`, each checked against its sha256."""
    missing = missing_parts(lease_dir)
    if missing:
        raise FileNotFoundError("parts missing or damaged: " + "; ".join(
            f"shipment {n} ({len(p)} parts: carry ship-{n} again)" for n, p in sorted(missing.items())))
    dest.mkdir(parents=True, exist_ok=True)
    built = []
    for entry in manifest(lease_dir)["files"]:
        target, partial = dest / entry["name"], dest / (entry["name"] + ".partial")
        with open(partial, "wb") as out:
            for part in entry["parts"]:
                with open(lease_dir / part["file"], "rb") as src:
                    shutil.copyfileobj(src, out, 4 * MIB)
        if sha256_file(partial) != entry["sha256"]:
            raise ValueError(f"{entry['name']} rebuilt from its parts has the wrong sha256")
        os.replace(partial, target)
        built.append(target)
    return built


def bundle(source: Path, out_dir: Path, part_bytes: int = RETURN_FILE_LIMIT) -> dict:
    """`source` as one tar cut into parts of at most `part_bytes` (what may come back from $OUT)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "bundle.tar"
        with tarfile.open(tar, "w") as handle:
            handle.add(source, arcname=".")
        size = tar.stat().st_size
        parts = []
        for start in range(0, size, part_bytes):
            name = f"bundle.tar.part{len(parts):02d}"
            take = min(part_bytes, size - start)
            parts.append(dict(file=name, bytes=take, sha256=_copy_range(tar, out_dir / name, start, take)))
        record = dict(bytes=size, sha256=sha256_file(tar), parts=parts)
    (out_dir / BUNDLE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def unbundle(out_dir: Path, dest: Path) -> Path:
    """Check and join what `bundle` wrote, then extract it into `dest` (refused if it exists)."""
    record_path = out_dir / BUNDLE
    if not record_path.is_file():
        raise FileNotFoundError(f"{out_dir} has no {BUNDLE}: not the output of `scripts/gpu_train.sh run`")
    if dest.exists():
        raise FileExistsError(f"{dest} already exists: choose another --runs folder")
    record = json.loads(record_path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "bundle.tar"
        with open(tar, "wb") as out:
            for part in record["parts"]:
                path = out_dir / part["file"]
                if not path.is_file() or sha256_file(path) != part["sha256"]:
                    raise ValueError(f"{path} is missing or differs from {BUNDLE}: fetch it again")
                with open(path, "rb") as src:
                    shutil.copyfileobj(src, out, 4 * MIB)
        if sha256_file(tar) != record["sha256"]:
            raise ValueError("the joined bundle has the wrong sha256")
        with tarfile.open(tar) as handle:
            handle.extractall(dest, filter="data")
    return dest
