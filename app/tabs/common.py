"""What every tab shares: the app's state (`Shared`), named outputs (`View`), error wording, and
the run-with-buttons-locked wiring (`Runner`).

A handler returns a `View`, a dataclass whose fields name its outputs; the wiring lists the
components by those same names (`View.outputs`), so the two can never drift out of order.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NoReturn

import gradio as gr
from gradio.events import Dependency

from icformer.text import check_length, clean_text

from ..examples import Example
from ..presentation import label, reference_html
from ..service import ModelService

log = logging.getLogger(__name__)

COMPRESSORS = ("icformer", "icae")  # methods that actually compress (the "full" context is the reference)
ANSWER_METHODS = ("icformer", "icae", "full")  # the three answer columns, in order
DOWNLOAD_TTL_S = 3600
STREAM_INTERVAL_S = 0.1  # at most ~10 page updates a second while decoding
EMPTY_HINTS = {"context": "Paste some text or pick an example.",
               "question": "Type a question, or pick one of the suggested questions."}


class UserInputError(ValueError):
    """Raised for input the visitor can fix; shown as a gr.Error with this message."""


def user_text(text: str | None, what: str, max_tokens: int) -> str:
    """`icformer.text`'s checks before any model work (so a huge paste is refused without waiting
    for the model), with the app's hint on how to fill an empty field."""
    text = clean_text(text or "", what, EMPTY_HINTS.get(what, ""))
    check_length(len(text), max_tokens, unit="characters", what=what)
    return text


def _gr_error(err: Exception, name: str) -> gr.Error:
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, ValueError):
        return gr.Error(str(err), title="Please check the input", print_exception=False)
    log.exception("unexpected error in %s", name)
    return gr.Error(f"Something went wrong ({type(err).__name__}: {err}). Please try again.", title="Error")


def _wrap(fn: Callable, on_error: Callable[[Exception], Exception] | None, convert: Callable[[Any], Any]) -> Callable:
    """``fn`` with its results passed through ``convert`` and its errors through ``on_error``; a
    generator function stays one (Gradio streams those), and the signature is kept (Gradio injects
    `gr.Request` and `gr.Progress` by it)."""

    def fail(err: Exception) -> NoReturn:
        raise (err if on_error is None else on_error(err)) from None

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                for item in fn(*args, **kwargs):
                    yield convert(item)
            except Exception as err:
                fail(err)

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return convert(fn(*args, **kwargs))
        except Exception as err:
            fail(err)

    return wrapper


def friendly_errors(fn: Callable) -> Callable:
    """Turn ValueError into gr.Error(message) and anything unexpected into a short gr.Error."""
    return _wrap(fn, lambda err: _gr_error(err, fn.__name__), lambda out: out)


# ---------------------------------------------------------------------- named outputs


@dataclass
class View:
    """A handler's outputs by name; subclasses declare one field per output component."""

    @classmethod
    def outputs(cls, components: Mapping[str, Any]) -> list:
        """The components for these fields, in field order."""
        return [components[f.name] for f in fields(cls)]

    def values(self) -> list:
        return [getattr(self, f.name) for f in fields(self)]


def as_gradio(fn: Callable) -> Callable:
    """A handler returning (or yielding) `View`s as one Gradio takes: their values in field order."""
    return _wrap(fn, None, lambda out: out.values() if isinstance(out, View) else out)


def listen(event: Callable, fn: Callable, inputs: Any, view: type[View], components: Mapping[str, Any],
           **kwargs: Any) -> Dependency:
    """``event(fn, inputs, outputs)`` (a listener such as ``button.click``) with ``fn``'s `View`s given to
    Gradio as values, and the outputs those of ``view``'s fields, by name."""
    return event(as_gradio(fn), inputs, view.outputs(components), **kwargs)


# ---------------------------------------------------------------------- shared state


@dataclass
class SessionContexts:
    """What one visitor compressed last: kept in gr.State, never shared between sessions.

    Only the compressors' vectors are kept (a few per chunk); the full context's embeddings are
    rebuilt per question, so a session holds kilobytes to a few megabytes.
    """

    key: str  # sha256 of the context text + the model fingerprint
    num_tokens: int
    contexts: dict[str, Any] = field(default_factory=dict)  # method -> CompressedContext
    downloads: dict[str, str] = field(default_factory=dict)  # method -> .safetensors path


def context_key(text: str, llm_hash: str) -> str:
    return hashlib.sha256((llm_hash + "\0" + text).encode("utf-8", "replace")).hexdigest()


class Shared:
    """The state every tab reads: the one `ModelService` (its `TurnLock` inside), the examples, the
    results directory, the context limit, and each session's Stop flag. Passed to each tab."""

    def __init__(self, service: ModelService, examples: Iterable[Example] = (), results_dir: str | Path = ".",
                 *, max_context_tokens: int = 4096, download_dir: Path | None = None) -> None:
        self.service = service
        self.examples = {e.title: e for e in examples}
        self.results_dir = Path(results_dir)
        self.max_context_tokens = max_context_tokens
        self.download_dir = Path(download_dir or Path(tempfile.gettempdir()) / "icformer-app-downloads")
        self._stops: dict[str, threading.Event] = {}  # session -> its running decode's Stop flag

    def context(self, text: str | None) -> str:
        return user_text(text, "context", self.max_context_tokens)

    @staticmethod
    def waiter(progress) -> Callable[[float], None]:
        """A ``ModelService.get`` callback: the progress bar says the model is still loading."""

        def wait(seconds: float) -> None:
            progress(0.05, desc=f"Loading the model (first use, {seconds:.0f} s)…")

        return wait

    def reference_for(self, question: str, text: str) -> str:
        """The reference answer's HTML when ``text`` is an example's and ``question`` one of its questions."""
        for ex in self.examples.values():
            if ex.text.strip() == (text or "").strip():
                for q, a in ex.questions:
                    if q == question:
                        return reference_html(a)
        return ""

    # ------------------------------------------------------------------ stop

    def stop_flag(self, request: gr.Request | None) -> threading.Event:
        """A fresh Stop flag for this session's decode (one decode at a time: the page locks its buttons)."""
        flag = threading.Event()
        key = getattr(request, "session_hash", None)
        if key:
            self._stops[key] = flag
        return flag

    def drop_stop(self, request: gr.Request | None, flag: threading.Event) -> None:
        key = getattr(request, "session_hash", None)
        if key and self._stops.get(key) is flag:
            del self._stops[key]

    def stop(self, request: gr.Request) -> None:
        """The Stop button: this session's running decode ends after its current token, keeping what it has."""
        flag = self._stops.get(getattr(request, "session_hash", None) or "")
        if flag is not None:
            flag.set()

    def stream(self, start: Callable[[Any], Iterator], stop: threading.Event) -> Iterator:
        """The library's token-by-token decode ``start(cc)`` (``cc.stream_answer`` / ``stream_reconstruct``),
        each token in its own turn on the shared model; it ends after the token during which Stop was pressed."""
        for item in self.service.turns(start):
            yield item
            if stop.is_set():
                return

    # ------------------------------------------------------------------ compressed contexts

    def ensure_contexts(self, cc, text: str, state: SessionContexts | None, methods, progress=None) -> SessionContexts:
        """Compress ``text`` with each of ``methods`` unless this session already did (same model, same text)."""
        key = context_key(text, cc.target.fingerprint)
        if state is None or state.key != key:
            ids = cc.tokenize(text, max_tokens=self.max_context_tokens)  # the library words the error
            state = SessionContexts(key=key, num_tokens=len(ids))
        todo = [m for m in methods if m in cc.methods() and m not in state.contexts]
        for i, method in enumerate(todo):
            if progress is not None:
                progress((i + 1) / (len(todo) + 1), desc=f"Compressing with {label(method)}…")
            state.contexts[method] = cc.compress(text, method=method)
        return state

    def save_download(self, ctx, method: str) -> str:
        """The compressed context as a .safetensors file for the download button (kept an hour)."""
        self._prune_downloads()
        folder = self.download_dir / uuid.uuid4().hex
        folder.mkdir(parents=True, exist_ok=True)
        return str(ctx.save(folder / f"compressed-{method}-{ctx.num_tokens}tok-{ctx.num_vectors}vec.safetensors"))

    def _prune_downloads(self) -> None:
        if not self.download_dir.is_dir():
            return
        cutoff = time.time() - DOWNLOAD_TTL_S
        for folder in self.download_dir.iterdir():
            try:
                if folder.stat().st_mtime < cutoff:
                    for f in folder.iterdir():
                        f.unlink()
                    folder.rmdir()
            except OSError:
                pass


class Tab:
    """A tab, or a section of one: ``layout()`` makes its components, kept in ``c`` by the names its
    views' fields use; ``wire()`` connects them to its handlers."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.c: dict[str, Any] = {}


class Throttle:
    """At most one page update per ``interval_s`` while a decode streams (the first one at once)."""

    def __init__(self, interval_s: float = STREAM_INTERVAL_S) -> None:
        self.interval_s, self._last = interval_s, 0.0

    def due(self) -> bool:
        now = time.perf_counter()
        if now - self._last > self.interval_s:
            self._last = now
            return True
        return False


# ---------------------------------------------------------------------- wiring


class Runner:
    """Wires a model run so that, while it runs, every model button is locked and the Stop buttons
    are live, and its outputs start blank (an error never sits above an old result)."""

    PRIVATE = dict(api_visibility="private")

    def __init__(self, model_buttons: list, stop_buttons: list, groups: dict[str, int]) -> None:
        self.model_buttons, self.stop_buttons, self.groups = model_buttons, stop_buttons, groups

    def _lock(self, locked: bool) -> list:
        return ([gr.update(interactive=not locked) for _ in self.model_buttons]
                + [gr.update(interactive=locked) for _ in self.stop_buttons])

    @staticmethod
    def _blank(component):
        if isinstance(component, gr.DownloadButton):
            return gr.update(value=None, visible=False)
        return gr.update(value=None)

    def run_locked(self, triggers: list, fn: Callable, inputs: list, view: type[View], components: Mapping[str, Any],
                   api_name: str, group: str, progress_on: list | None = None) -> Dependency:
        """``fn`` (returning ``view``s) on ``triggers``, under api_name, in concurrency group ``group``."""
        shown = [o for o in view.outputs(components) if not isinstance(o, gr.State)]
        buttons = [*self.model_buttons, *self.stop_buttons]
        ev = gr.on(triggers, lambda: [*self._lock(True), *map(self._blank, shown)], None, [*buttons, *shown],
                   queue=False, **self.PRIVATE)
        main = listen(ev.then, fn, inputs, view, components, api_name=api_name, concurrency_id=group,
                      concurrency_limit=self.groups[group], show_progress_on=progress_on)
        # Gradio 6.31's page skips .then() after an error, so re-enable on failure explicitly too.
        main.then(lambda: self._lock(False), None, buttons, queue=False, **self.PRIVATE)
        main.failure(lambda: self._lock(False), None, buttons, queue=False, **self.PRIVATE)
        return main

