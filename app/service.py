"""One shared model for every visitor: loaded once, lazily, and used under a lock.

The Space holds a single :class:`~icformer.ContextCompressor`. Loading it takes seconds
(tens on a cold cache), so it starts in a background thread when the app starts and every
handler waits for it (showing progress) instead of loading its own copy. Model calls go
through :meth:`ModelService.session`, which holds a :class:`TurnLock`: a shared torch
module is not safe to run from two threads at once. Several requests run at once in the
Gradio queue and take turns on the model in arrival order; a decode takes one turn per
token, so a short request waits for one token step of each running decode, not for the
whole decode.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

_DONE = object()
CompressorFactory = Callable[[], "object"]  # returns an icformer.ContextCompressor or a LoadedModel


@dataclass
class LoadedModel:
    """A compressor together with the profile it came from, so the UI can say which one runs
    and why it is not the one that was asked for. Factories may return a bare compressor."""

    compressor: object
    profile: str | None = None  # the profile loaded; None: a factory that uses no profile
    requested_profile: str | None = None
    fallback: str | None = None  # why requested_profile was not loaded


def default_factory(device: str | None = None, profile: str | None = None,
                    fallback: str | None = None) -> CompressorFactory:
    """The named profile (None: $ICFORMER_PROFILE, else the embedded SmolLM2 with assets/
    checkpoints); one that cannot be loaded falls back to `fallback` (None: the embedded one).

    The choice is made once, at launch: every visitor shares this one model.
    """

    def build() -> LoadedModel:
        from icformer import UntrainedWarning
        from icformer.compressor import load_profile_or_fallback
        from icformer.profiles import DEFAULT_PROFILE, resolve_profile_name

        requested, instead = resolve_profile_name(profile), fallback or DEFAULT_PROFILE
        with warnings.catch_warnings():
            # The UI shows its own banner for untrained weights.
            warnings.simplefilter("ignore", UntrainedWarning)
            compressor, reason = load_profile_or_fallback(requested, fallback=instead, device=device)
        if reason:
            log.warning("%s", reason)
        loaded = instead if reason else requested
        return LoadedModel(compressor, profile=loaded, requested_profile=requested, fallback=reason)

    return build


@dataclass
class ModelInfo:
    """What the About tab and the banner say about the loaded model (plain data)."""

    llm: str = ""
    llm_hash: str = ""
    hidden_size: int = 0
    num_layers: int = 0
    device: str = ""
    dtype: str = ""
    methods: list[str] = field(default_factory=list)
    compressors: dict[str, dict] = field(default_factory=dict)  # method -> {k, L, trained, training, params}
    load_seconds: float = 0.0
    profile: str | None = None  # see LoadedModel
    requested_profile: str | None = None
    profile_fallback: str | None = None

    @property
    def untrained(self) -> list[str]:
        return [m for m, c in self.compressors.items() if not c.get("trained", False)]


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is under it (shorter on the page)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def describe(cc) -> ModelInfo:
    """Read what a ContextCompressor carries, for display."""
    from icformer.publish import card_summary, read_card

    config = cc.llm.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    compressors: dict[str, dict] = {}
    for method in cc.methods():
        model = cc.model_for(method)
        if model is None:
            continue
        cfg = getattr(model, "config", None)
        card = read_card(getattr(model, "source_dir", None))
        compressors[method] = dict(
            trained=bool(getattr(model, "trained", False)),
            training=card_summary(card) if card else None,
            card_path=_shown(model.source_dir / "README.md") if card else None,
            k=getattr(cfg, "num_digest_tokens", None),
            L=getattr(cfg, "chunk_size", None),
            params=sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else None,
        )
    return ModelInfo(
        llm=cc.target.name,
        llm_hash=cc.target.fingerprint,
        hidden_size=cc.target.hidden_size,
        num_layers=int(getattr(text_config, "num_hidden_layers", 0) or 0),
        device=str(cc.device),
        dtype=cc.target.dtype_name,
        methods=list(cc.methods()),
        compressors=compressors,
    )


class TurnLock:
    """A re-entrant lock granted in arrival order.

    ``threading.Lock`` lets the thread that just released it take it straight back, so a
    decode that locks once per token would starve everyone else; here a released lock
    goes to the longest waiter, and the releaser queues behind it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque = collections.deque()
        self._owner: int | None = None
        self._depth = 0

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return
            ticket = object()
            self._queue.append(ticket)
            while self._owner is not None or self._queue[0] is not ticket:
                self._cond.wait()
            self._queue.popleft()
            self._owner, self._depth = me, 1

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("TurnLock released by a thread that does not hold it")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def waiting(self) -> int:
        """Callers queued for the lock now (not counting its holder)."""
        with self._cond:
            return len(self._queue)

    def __enter__(self) -> "TurnLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class ModelService:
    """Lazily builds the compressor once (optionally in the background) and lends it out."""

    def __init__(self, factory: CompressorFactory, *, warm_up: bool = True) -> None:
        self._factory = factory
        self._warm_up = warm_up
        self._compressor = None
        self._info: ModelInfo | None = None
        self._error: str | None = None
        self._state = "idle"  # idle -> loading -> ready | error
        self._load_lock = threading.Lock()
        self._ready = threading.Event()
        self._started = 0.0
        self.lock = TurnLock()  # held around every model call (a decode: every token step)

    # ------------------------------------------------------------------ loading

    def start_background(self) -> None:
        """Begin loading in a daemon thread (no-op when already loading or loaded)."""
        if self._state != "idle":
            return
        threading.Thread(target=self._load_quietly, name="icformer-model-loader", daemon=True).start()

    def _load_quietly(self) -> None:
        try:
            self._load()
        except Exception:  # recorded in self._error and shown in the banner
            pass

    def _load(self):
        with self._load_lock:
            if self._compressor is not None:
                return self._compressor
            self._state, self._error, self._started = "loading", None, time.perf_counter()
            try:
                loaded = self._factory()
                if not isinstance(loaded, LoadedModel):
                    loaded = LoadedModel(loaded)
                cc = loaded.compressor
                if self._warm_up:
                    self._warm(cc)
                info = describe(cc)
                info.load_seconds = time.perf_counter() - self._started
                info.profile, info.requested_profile = loaded.profile, loaded.requested_profile
                info.profile_fallback = loaded.fallback
            except Exception as err:
                log.exception("loading the compressor failed")
                self._state, self._error = "error", f"{type(err).__name__}: {err}"
                self._ready.set()
                raise
            self._compressor, self._info, self._state = cc, info, "ready"
            self._ready.set()
            log.info("compressor ready on %s in %.1f s", info.device, info.load_seconds)
            return cc

    def _warm(self, cc) -> None:
        """One tiny call per method, so the first visitor's timings are not the cold start's."""
        with self.lock:
            for method in cc.methods():
                try:
                    cc.compress("A short warm-up sentence for the compressor.", method=method)
                except Exception as err:  # a failing warm-up must not block the app
                    log.warning("warm-up of %s failed: %s", method, err)

    def get(self, wait_callback: Callable[[float], None] | None = None):
        """The compressor, loading it now if nobody has started yet (waits if someone has)."""
        if self._compressor is not None:
            return self._compressor
        if self._state == "idle":
            self.start_background()
        while not self._ready.wait(timeout=0.25):
            if wait_callback is not None:
                wait_callback(time.perf_counter() - self._started)
        if self._compressor is None:
            raise RuntimeError(f"The model could not be loaded: {self._error}")
        return self._compressor

    @contextmanager
    def session(self, wait_callback: Callable[[float], None] | None = None) -> Iterator[object]:
        """``with service.session() as cc:`` — the compressor, exclusively, for one model call."""
        cc = self.get(wait_callback)
        with self.lock:
            yield cc

    def turns(self, start: Callable[[object], Iterator]) -> Iterator:
        """Each item of the iterator ``start(cc)`` returns, every ``next()`` in its own turn on the model.

        For the library's token-by-token decodes: between two tokens other requests get the model.
        Stop iterating to stop the decode; nothing is held between turns.
        """
        with self.session() as cc:
            steps = iter(start(cc))
        while True:
            with self.session():
                item = next(steps, _DONE)
            if item is _DONE:
                return
            yield item

    # ------------------------------------------------------------------ status

    @property
    def state(self) -> str:
        return self._state

    @property
    def info(self) -> ModelInfo | None:
        return self._info

    @property
    def error(self) -> str | None:
        return self._error

    def loading_seconds(self) -> float:
        return time.perf_counter() - self._started if self._state == "loading" else 0.0
