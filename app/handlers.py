"""Event handlers: validate input, call the ``icformer`` library, shape the results for display.

No model logic lives here. Each public method of :class:`Handlers` backs one Gradio endpoint
(see ``ui.py`` for the api_names). Errors the visitor can fix (empty, too long, binary input,
or any ``ValueError`` the library raises) become ``gr.Error`` with the library's own message;
anything else is logged and shown as a short error, never a traceback.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import gradio as gr
import pandas as pd

from icformer.compressor import RECONSTRUCTION_MARGIN
from icformer.text import check_length, clean_text

from . import charts, results, speed
from .about import PROFILE_CHOICE_HTML
from .examples import Example
from .presentation import (
    answer_comparison, banner, bench_runs_html, decoding_note, device_label, esc, fmt_count, fmt_flops, fmt_ratio,
    fmt_seconds, label, memory_label, positions_label, profiles_table, reconstruction_stats, run_name, speed_table,
    speedup_html, table_html, timing_card, tokens_to_vectors, word_diff,
)
from .results import (
    QA_METRICS, filter_samples, load_bench_meta, load_bench_results, load_results, meta_table_html, order_methods,
)
from .service import ModelService

log = logging.getLogger(__name__)

COMPRESSORS = ("icformer", "icae")  # methods that actually compress (the "full" context is the reference)
ANSWER_METHODS = ("icformer", "icae", "full")  # the three Ask columns, in order
DOWNLOAD_TTL_S = 3600
REFERENCE_LENGTHS = [128, 256, 512, 1024, 2048, 4096]
QUESTION_MAX_TOKENS = 200
RECONSTRUCT_MAX_TOKENS = 1024  # one request's decode budget: about 35 s of an idle 2-core CPU
STREAM_INTERVAL_S = 0.1  # at most ~10 page updates a second while decoding
EMPTY_HINTS = {"context": "Paste some text or pick an example.",
               "question": "Type a question, or pick one of the suggested questions."}


class UserInputError(ValueError):
    """Raised for input the visitor can fix; shown as a gr.Error with this message."""


def friendly_errors(fn: Callable) -> Callable:
    """Turn ValueError into gr.Error(message) and anything unexpected into a short gr.Error."""

    def convert(err: Exception) -> gr.Error:
        if isinstance(err, gr.Error):
            return err
        if isinstance(err, ValueError):
            return gr.Error(str(err), title="Please check the input", print_exception=False)
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"Something went wrong ({type(err).__name__}: {err}). Please try again.", title="Error")

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise convert(err) from None

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise convert(err) from None

    return wrapper


# ---------------------------------------------------------------------- per-session state


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


def _context_key(text: str, llm_hash: str) -> str:
    return hashlib.sha256((llm_hash + "\0" + text).encode("utf-8", "replace")).hexdigest()


def check_text(text: Any, what: str, max_tokens: int | None = None) -> str:
    """Cheap checks before any model work, worded by the library (`icformer.text`): a string, not
    empty, not binary junk, not over the character budget of ``max_tokens``. Returns the cleaned text."""
    if text is None:
        text = ""
    if not isinstance(text, (str, bytes, bytearray)):
        raise UserInputError(f"The {what} must be text.")
    text = clean_text(text, what, EMPTY_HINTS.get(what, ""))
    if max_tokens is not None:
        check_length(len(text), max_tokens, unit="characters", what=what)
    return text


def reconstruction_limit(num_tokens: int, requested: float | None) -> int:
    """New tokens for one reconstruction: as asked (0 or None: the context's length plus a margin),
    never more than that, nor than `RECONSTRUCT_MAX_TOKENS`."""
    enough = num_tokens + RECONSTRUCTION_MARGIN
    return max(1, min(int(requested or 0) or enough, enough, RECONSTRUCT_MAX_TOKENS))


class ReconstructView(NamedTuple):
    """The Reconstruct tab's outputs, in ``ui.py``'s order."""

    diff: Any
    stats: str
    text: str
    summary: Any
    state: Any


# ---------------------------------------------------------------------- handlers


class Handlers:
    def __init__(
        self,
        service: ModelService,
        examples: list[Example],
        results_dir: Path,
        *,
        max_context_tokens: int = 4096,
        download_dir: Path | None = None,
    ) -> None:
        self.service = service
        self.examples = {e.title: e for e in examples}
        self.results_dir = Path(results_dir)
        self.max_context_tokens = max_context_tokens
        self._stops: dict[str, threading.Event] = {}  # session -> its running decode's Stop flag
        self.download_dir = Path(download_dir or Path(tempfile.gettempdir()) / "icformer-app-downloads")

    # ------------------------------------------------------------------ shared pieces

    def _waiter(self, progress) -> Callable[[float], None]:
        def wait(seconds: float) -> None:
            progress(0.05, desc=f"Loading the model (first use, {seconds:.0f} s)…")

        return wait

    def _tokenize(self, cc, text: str) -> list[int]:
        return cc.tokenize(text, max_tokens=self.max_context_tokens)  # the library words the error

    # ------------------------------------------------------------------ stop

    def _stop_flag(self, request: gr.Request | None) -> threading.Event:
        """A fresh Stop flag for this session's decode (one decode at a time: the page locks its buttons)."""
        flag = threading.Event()
        key = getattr(request, "session_hash", None)
        if key:
            self._stops[key] = flag
        return flag

    def _drop_stop(self, request: gr.Request | None, flag: threading.Event) -> None:
        key = getattr(request, "session_hash", None)
        if key and self._stops.get(key) is flag:
            del self._stops[key]

    def stop(self, request: gr.Request) -> None:
        """The Stop button: this session's running decode ends after its current token, keeping what it has."""
        flag = self._stops.get(getattr(request, "session_hash", None) or "")
        if flag is not None:
            flag.set()

    def _ensure_contexts(self, cc, text: str, state: SessionContexts | None, methods, progress=None) -> SessionContexts:
        """Compress ``text`` with each of ``methods`` unless this session already did (same model, same text)."""
        key = _context_key(text, cc.target.fingerprint)
        if state is None or state.key != key:
            ids = self._tokenize(cc, text)
            state = SessionContexts(key=key, num_tokens=len(ids))
        todo = [m for m in methods if m in cc.methods() and m not in state.contexts]
        for i, method in enumerate(todo):
            if progress is not None:
                progress((i + 1) / (len(todo) + 1), desc=f"Compressing with {label(method)}…")
            state.contexts[method] = cc.compress(text, method=method)
        return state

    def _save_download(self, ctx, method: str) -> str:
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

    # ------------------------------------------------------------------ status

    def status_banner(self) -> str:
        svc = self.service
        if svc.state in ("idle", "loading"):
            secs = svc.loading_seconds()
            return banner(
                "info",
                '<span class="icf-spinner"></span> Loading the model in the background'
                + (f" ({secs:.0f} s)" if secs >= 1 else "")
                + "… You can paste a context meanwhile; the first request waits for it.",
            )
        if svc.state == "error":
            return banner("error", f"<b>The model failed to load:</b> {esc(svc.error)}")
        info = svc.info
        profile = f"profile <b>{esc(info.profile)}</b>, " if info.profile else ""
        parts = [
            f"<b>Ready</b>: {profile}{esc(info.llm)} on <b>{esc(device_label(info.device))}</b> ({esc(info.dtype)}), "
            f"methods: {esc(', '.join(label(m) for m in info.methods))}."
        ]
        if "icae" not in info.methods:
            parts.append(" ICAE is not loaded (no checkpoint), so only IC-Former and the full context are compared.")
        html = banner("ok", "".join(parts))
        if info.profile_fallback:
            html += self._fallback_banner(info)
        if info.untrained:
            which = " and ".join(label(m) for m in info.untrained)
            html += banner(
                "warn",
                f"<b>Untrained compressor</b> ({esc(which)}: random weights or an unfinished training run): outputs are noise "
                "until finished checkpoints land in <code>assets/checkpoints/</code>. Timings, FLOPs and memory are real.",
            )
        return html

    @staticmethod
    def _fallback_banner(info) -> str:
        """Why the profile asked for at launch is not the one running, and how to choose."""
        reason = esc(info.profile_fallback).replace("\n", "<br>")
        return banner(
            "warn",
            f"<b>Profile {esc(info.requested_profile)} is not available here.</b><br>{reason}<br>"
            f"{PROFILE_CHOICE_HTML} The About tab lists every profile and what it is missing.",
        )

    def status(self) -> dict:
        """JSON for the api: state, and the loaded model when ready."""
        svc = self.service
        out: dict[str, Any] = {"state": svc.state}
        if svc.error:
            out["error"] = svc.error
        if svc.info is not None:
            info = svc.info
            out.update(
                llm=info.llm, llm_hash=info.llm_hash, device=info.device, dtype=info.dtype, methods=info.methods,
                compressors=info.compressors, untrained=info.untrained, load_seconds=round(info.load_seconds, 2),
                profile=info.profile, requested_profile=info.requested_profile,
                profile_fallback=info.profile_fallback,
            )
        return out

    def model_markdown(self) -> str:
        info = self.service.info
        if info is None:
            return f"*Model state: {self.service.state}.*" + (f" Error: `{self.service.error}`" if self.service.error else "")
        lines = ["| Component | Details |", "|---|---|"]
        if info.profile:
            asked = f" (asked for: {info.requested_profile}, not available)" if info.profile_fallback else ""
            lines.append(f"| Profile | {info.profile}{asked}; chosen at launch, see Model profiles below |")
        lines += [
            f"| Target LLM (frozen) | {info.llm} — hidden size {info.hidden_size}, {info.num_layers} layers |",
            f"| LLM weights fingerprint | `{info.llm_hash[:16]}…` |",
            f"| Device / dtype | {device_label(info.device)} / {info.dtype} |",
        ]
        for method, c in info.compressors.items():
            params = fmt_count(c["params"]) + " trainable parameters" if c.get("params") else ""
            state = "**trained checkpoint**" if c.get("trained") else "**untrained** (random initialisation)"
            if c.get("training"):
                state += f" ({c['training']}; model card `{c['card_path']}`)"
            lines.append(f"| {label(method)} | {state}; k={c.get('k')} vectors per chunk of L={c.get('L')} tokens; {params} |")
        if "icae" not in info.compressors:
            lines.append("| ICAE | not loaded (no checkpoint in `assets/checkpoints/icae/`) |")
        lines.append(f"| Load time | {info.load_seconds:.1f} s |")
        return "\n".join(lines)

    def profiles_html(self) -> str:
        """The About tab's profile table, with how a profile is chosen (at launch, for everyone)."""
        from icformer.profiles import list_profiles

        info = self.service.info
        loaded = info.profile if info else None
        requested = info.requested_profile if info else None
        note = self._fallback_banner(info) if info and info.profile_fallback else ""
        return (f"<p class='icf-muted'>{PROFILE_CHOICE_HTML}</p>{note}"
                f"{profiles_table(list_profiles(), loaded=loaded, requested=requested)}")

    # ------------------------------------------------------------------ examples

    def pick_example(self, title: str | None):
        ex = self.examples.get(title or "")
        if ex is None:
            return gr.skip(), *([gr.update(visible=False)] * 3), ""
        buttons = []
        for i in range(3):
            if i < len(ex.questions):
                buttons.append(gr.update(value=ex.questions[i][0], visible=True))
            else:
                buttons.append(gr.update(visible=False))
        return ex.text, *buttons, f"*{esc(ex.source)}*"

    def pick_question(self, question: str, text: str):
        return question, self.reference_for(question, text)

    def reference_for(self, question: str, text: str) -> str:
        for ex in self.examples.values():
            if ex.text.strip() == (text or "").strip():
                for q, a in ex.questions:
                    if q == question:
                        return f"<div class='icf-reference'><b>Reference answer:</b> {esc(a)}</div>"
        return ""

    # ------------------------------------------------------------------ compress

    @friendly_errors
    def compress(self, text: str, state: SessionContexts | None, progress=gr.Progress()):
        text = check_text(text, "context", self.max_context_tokens)
        progress(0.0, desc="Waiting for the model…")
        with self.service.session(self._waiter(progress)) as cc:
            fresh = state is None or state.key != _context_key(text, cc.target.fingerprint)
            if not fresh:  # re-measure: the visitor pressed Compress again on purpose
                state = SessionContexts(key=state.key, num_tokens=state.num_tokens)
            state = self._ensure_contexts(cc, text, state, COMPRESSORS, progress)
            methods = [m for m in COMPRESSORS if m in state.contexts]
            flops = {m: speed.compression_flops(cc, m, state.num_tokens) for m in methods}
        progress(0.95, desc="Saving the compressed context…")
        state.downloads = {m: self._save_download(state.contexts[m], m) for m in methods}

        rows, summary = [], {}
        for m in methods:
            z = state.contexts[m]
            meta, secs = z.metadata, z.timings.get("compress_s", 0.0)
            summary[m] = dict(
                num_tokens=z.num_tokens, num_vectors=z.num_vectors, num_chunks=meta.get("num_chunks"),
                k=meta.get("k"), L=meta.get("L"), compress_s=secs, flops=flops.get(m),
                memory_bytes=meta.get("memory_bytes"), memory_kind=meta.get("memory_kind"),
                device=meta.get("device"), trained=z.trained,
            )
            rows.append([
                label(m), f"{z.num_tokens:,} → {z.num_vectors:,} ({positions_label(z.num_tokens, z.num_vectors)})",
                fmt_seconds(secs),
                fmt_flops(flops.get(m)), memory_label(meta.get("memory_bytes"), meta.get("memory_kind")),
                device_label(meta.get("device")), "yes" if z.trained else "no (noise)",
            ])
        icf, icae = summary.get("icformer", {}), summary.get("icae", {})
        if icf and icae and icf["compress_s"] > 0:
            summary["speedup"] = icae["compress_s"] / icf["compress_s"]
            if icf.get("flops") and icae.get("flops"):
                summary["flops_ratio"] = icae["flops"] / icf["flops"]
        z0 = state.contexts[methods[0]]
        headline = tokens_to_vectors(z0.num_tokens, z0.num_vectors, methods[0], z0.metadata.get("k"))
        headline += speedup_html(icf.get("compress_s"), icae.get("compress_s"), z0.metadata.get("device", ""))
        if "flops_ratio" in summary:
            headline += f'<div class="icf-muted">FLOPs: IC-Former needs {fmt_ratio(summary["flops_ratio"])} fewer.</div>'
        if not z0.trained:
            headline += banner("warn", "Untrained compressor: the vectors are real but their content is noise.")
        table = table_html(["method", "tokens → vectors", "compress time", "FLOPs", "memory", "device", "trained"],
                           rows)
        downloads = [
            gr.update(value=state.downloads[m], visible=True, label=f"Download {label(m)} context (.safetensors)")
            if m in state.downloads else gr.update(value=None, visible=False)
            for m in COMPRESSORS
        ]
        return headline, table, *downloads, summary, state

    # ------------------------------------------------------------------ ask

    def _answer_outputs(self, methods_loaded, texts, cards, summary_html, summary, state):
        out = []
        for m in ANSWER_METHODS:
            if m not in methods_loaded:
                out += [gr.update(value="", placeholder=f"{label(m)} is not loaded (no checkpoint)."),
                        banner("info", f"{label(m)} is not loaded: add a checkpoint in assets/checkpoints/{m}/.")]
            else:
                out += [texts.get(m, ""), cards.get(m, "")]
        return (*out, summary_html, summary, state)

    @friendly_errors
    def ask(self, text: str, question: str, max_new_tokens: float, state: SessionContexts | None,
            request: gr.Request = None, progress=gr.Progress()):
        """Three answers, streamed one after another; each token is one turn on the shared model."""
        text = check_text(text, "context", self.max_context_tokens)
        question = check_text(question, "question", QUESTION_MAX_TOKENS)
        max_new = int(max(1, min(int(max_new_tokens or 64), 512)))
        stop = self._stop_flag(request)
        texts: dict[str, str] = {}
        cards: dict[str, str] = {}
        answers: dict[str, Any] = {}
        try:
            progress(0.0, desc="Waiting for the model…")
            with self.service.session(self._waiter(progress)) as cc:
                state = self._ensure_contexts(cc, text, state, COMPRESSORS)
                loaded = list(cc.methods())
                # The full context's own embeddings: a lookup, so made per question, not kept in the session.
                sources = dict(state.contexts, full=cc.compress(text, method="full"))
            todo = [m for m in ANSWER_METHODS if m in sources]
            for i, m in enumerate(todo):
                if stop.is_set():
                    break
                progress(i / len(todo), desc=f"Answering from {label(m)}…")
                cards[m] = '<div class="icf-muted">generating…</div>'
                shown, ans = 0.0, None
                start = lambda cc, z=sources[m]: cc.stream_answer(z, question, max_new_tokens=max_new)  # noqa: E731
                for ans in self.service.turns(start):
                    if stop.is_set():
                        break
                    if time.perf_counter() - shown > STREAM_INTERVAL_S:
                        shown, texts[m] = time.perf_counter(), ans.text
                        yield self._answer_outputs(loaded, texts, cards, gr.skip(), gr.skip(), gr.skip())
                answers[m] = ans
                texts[m] = ans.text or "(empty answer)"
                cards[m] = timing_card(m, ans.timings, ans.device, self._answer_note(m, ans, state))
                yield self._answer_outputs(loaded, texts, cards, gr.skip(), gr.skip(), gr.skip())
        finally:
            self._drop_stop(request, stop)
        summary = {
            m: dict(text=ans.text, timings=ans.timings, device=ans.device, trained=ans.trained, stopped=not ans.done,
                    prompt_positions=ans.prompt_positions, peak_memory_bytes=ans.peak_memory_bytes,
                    num_tokens=state.num_tokens)
            for m, ans in answers.items()
        }
        yield self._answer_outputs(loaded, texts, cards, self._ask_headline(answers, question, text, stop.is_set()),
                                   summary, state)

    def _answer_note(self, method: str, ans, state: SessionContexts | None) -> str:
        note = f"<div class='icf-muted'>LLM read {ans.prompt_positions} positions"
        if state is not None and method in state.contexts and method != "full":
            z = state.contexts[method]
            note += f" ({z.num_vectors} vectors instead of {z.num_tokens} tokens)"
        note += "</div>"
        if not ans.done:
            note += "<div class='icf-badge-warn'>stopped before the end</div>"
        if not ans.trained:
            note += "<div class='icf-badge-warn'>untrained: noise</div>"
        return note

    def _ask_headline(self, answers: dict, question: str, text: str, stopped: bool = False) -> str:
        full = answers.get("full")
        html = banner("info", "Stopped: the answers so far are shown.") if stopped else ""
        for m in COMPRESSORS:
            ans = answers.get(m)
            if ans and full:
                html += answer_comparison(m, ans.timings, full.timings)
        return html + self.reference_for(question, text)

    # ------------------------------------------------------------------ reconstruct

    @friendly_errors
    def reconstruct(self, text: str, method: str, max_new_tokens: float, state: SessionContexts | None,
                    request: gr.Request = None, progress=gr.Progress()):
        """Decode the session's vectors back to text, streamed; Stop keeps what was decoded.

        Each token is one turn on the shared model, so other visitors' requests run in between."""
        from icformer.metrics import sentence_bleu

        text = check_text(text, "context", self.max_context_tokens)
        method = method if method in COMPRESSORS else "icformer"
        stop = self._stop_flag(request)
        began = time.perf_counter()
        try:
            progress(0.0, desc="Waiting for the model…")
            with self.service.session(self._waiter(progress)) as cc:
                if method not in cc.methods():
                    raise UserInputError(f"{label(method)} is not loaded; choose {label('icformer')}.")
                state = self._ensure_contexts(cc, text, state, (method,), progress)
                z = state.contexts[method]
            limit = reconstruction_limit(z.num_tokens, max_new_tokens)
            shown, result = 0.0, None
            start = lambda cc: cc.stream_reconstruct(z, max_new_tokens=limit)  # noqa: E731
            for result in self.service.turns(start):
                if stop.is_set():
                    break
                if time.perf_counter() - shown > STREAM_INTERVAL_S:
                    shown, done = time.perf_counter(), len(result.token_ids)
                    progress(done / limit, desc=f"Decoding {label(method)} vectors: {done:,} of up to {limit:,} tokens")
                    yield ReconstructView([(result.text, None)] if result.text else [],
                                          decoding_note(done, limit, result.timings, time.perf_counter() - began),
                                          result.text, gr.skip(), gr.skip())
        finally:
            self._drop_stop(request, stop)
        original = " ".join(text.split())
        bleu = sentence_bleu(result.text, original) if result.text.strip() else 0.0
        spans, counts = word_diff(original, result.text)
        wall = time.perf_counter() - began
        stats = reconstruction_stats(bleu, counts, z.num_tokens, z.num_vectors, result, limit,
                                     capped=limit < z.num_tokens + RECONSTRUCTION_MARGIN, wall_s=wall)
        summary = dict(method=method, bleu=bleu, text=result.text, num_tokens=z.num_tokens,
                       num_vectors=z.num_vectors, timings=result.timings, device=result.device,
                       trained=result.trained, diff_counts=counts, max_new_tokens=limit, stopped=not result.done,
                       wall_s=wall)
        yield ReconstructView(spans, stats, result.text, summary, state)

    # ------------------------------------------------------------------ attention

    @friendly_errors
    def attention(self, text: str, progress=gr.Progress()):
        """IC-Former's digest attention over the context's first chunk: heatmap, band numbers, JSON."""
        from icformer.attention import context_attention

        text = check_text(text, "context", self.max_context_tokens)
        progress(0.0, desc="Waiting for the model…")
        with self.service.session(self._waiter(progress)) as cc:
            report = context_attention(cc, text)
        last = len(report.layers)
        figure = charts.attention_figure(report.tokens, report.weights[-1].tolist(), last)
        rows = [(i, f"{s.order_correlation:.2f}", f"{s.in_order:.2f}",
                 f"{s.window_mass:.3f} (uniform {s.uniform_window_mass:.3f})", f"{s.context_mass:.2f}")
                for i, s in enumerate(report.layers, 1)]
        html = table_html(("layer", "order correlation", "moves forward", "best 5-token window", "on context"), rows)
        html += (f"<div class='icf-muted'>The first {len(report.tokens)} tokens (one chunk). A pre-trained IC-Former "
                 "in the paper shows a diagonal band in its last layer: each digest on 3-5 consecutive tokens, in "
                 "order (order correlation near 1, most attention in one window).</div>")
        if not report.trained:
            html += banner("warn", "Untrained compressor: its attention is noise.")
        summary = dict(num_tokens=len(report.tokens), trained=report.trained,
                       layers=[vars(s) for s in report.layers])
        return figure, html, summary

    # ------------------------------------------------------------------ speed

    def _committed_note(self) -> tuple[pd.DataFrame | None, str]:
        """Committed benchmark rows, each run named by machine, model and date (not by its file)."""
        bench_dir = self.results_dir / "bench"
        committed, problems = load_bench_results(bench_dir)
        if committed is None:
            note = f"No committed benchmark results in `{bench_dir}` yet (`python -m icformer bench --out {bench_dir}`)."
        else:
            metas = load_bench_meta(bench_dir)
            names = {m["source"]: run_name(m) for m in metas}
            committed = committed.assign(source=committed["source"].map(lambda stem: names.get(stem, stem)))
            where = "; ".join(
                f"{run_name(m)} ({m.get('dtype', '?')}" + (f", {m['threads']} threads" if m.get("threads") else "") + ")"
                for m in metas
            )
            if not where:
                where = ", ".join(sorted(committed["device"].astype(str).unique())) if "device" in committed else "?"
            note = f"Dashed: committed benchmark ({len(committed)} rows) measured on {where}."
        if problems:
            note += " Could not read: " + "; ".join(problems)
        return committed, note

    def speed_reference(self, log_scale: bool = True):
        """Committed benchmark results, run by run, and the FLOPs curve (no model run needed)."""
        committed, note = self._committed_note()
        available, why = speed.bench_available(self.service.get() if self.service.info else None)
        if not available:
            note += f"  \n**Live benchmark unavailable:** {why}"
        flops = speed.flops_curve(self.service.get(), self._flops_lengths()) if self.service.info else None
        runs = speed.committed_runs(self.results_dir / "bench")
        return (charts.speed_figure(None, committed, log=log_scale), charts.flops_figure(flops, log=log_scale), note,
                bench_runs_html(runs, speed.paper_speed_rows()))

    def _flops_lengths(self, live=None) -> list[int]:
        """The FLOPs chart's lengths: the reference ones up to this app's limit, plus any live ones."""
        lengths = {n for n in REFERENCE_LENGTHS if n <= self.max_context_tokens}
        if live is not None and "length" in live:
            lengths |= {int(x) for x in live["length"]}
        return sorted(lengths)

    @friendly_errors
    def bench(self, lengths: list, log_scale: bool, progress=gr.Progress()):
        """The library's quick benchmark, one length per turn on the shared model."""
        try:
            lengths = sorted({int(x) for x in (lengths or [])})
        except (TypeError, ValueError):
            raise UserInputError("Context lengths must be whole numbers of tokens, e.g. \"128\".") from None
        if not lengths:
            raise UserInputError("Choose at least one context length.")
        if min(lengths) < 1 or max(lengths) > self.max_context_tokens:
            raise UserInputError(f"Context lengths must be between 1 and {self.max_context_tokens:,} tokens.")
        available, why = speed.bench_available()
        if not available:
            raise UserInputError(why)
        progress(0.0, desc="Waiting for the model…")
        frames = []
        for i, n in enumerate(lengths):
            with self.service.session(self._waiter(progress)) as cc:
                available, why = speed.bench_available(cc)
                if not available:
                    raise UserInputError(why)
                progress(i / len(lengths), desc=f"Benchmarking {n:,} tokens…")
                frames.append(speed.run_quick_benchmark(cc, [n]))
        live = pd.concat(frames, ignore_index=True)
        committed, note = self._committed_note()
        flops = speed.flops_curve(cc, self._flops_lengths(live))
        rows = live.astype(object).where(live.notna(), None).to_dict(orient="records")
        fig = charts.speed_figure(live, committed, log=log_scale)
        return (fig, charts.flops_figure(flops, log=log_scale), gr.update(value=speed_table(live), visible=True), rows,
                live)

    def replot(self, live, log_scale: bool):
        committed, _ = self._committed_note()
        flops = speed.flops_curve(self.service.get(), self._flops_lengths(live)) if self.service.info else None
        return charts.speed_figure(live, committed, log=log_scale), charts.flops_figure(flops, log=log_scale)

    # ------------------------------------------------------------------ evaluation

    @friendly_errors
    def dashboard(self, dataset: str | None = None):
        res = load_results(self.results_dir)
        no_table = gr.update(value=None, visible=False)
        if res.empty:
            msg = banner(
                "info",
                f"No evaluation results yet in <code>{esc(res.directory)}</code> — run "
                "<code>python -m icformer evaluate</code> to produce them.",
            )
            if res.problems:
                msg += banner("warn", "Could not read: " + esc("; ".join(res.problems)))
            empty = charts.empty_figure("No evaluation results yet")
            return (msg, no_table, empty, empty, no_table, no_table, "", gr.update(choices=["All"], value="All"),
                    gr.update(choices=["All"], value="All"), gr.update(choices=["All"], value="All"),
                    gr.update(visible=False))
        msg = meta_table_html(res.meta) if res.meta else banner("ok", "Committed evaluation results")
        if res.problems:
            msg += banner("warn", "Could not read: " + esc("; ".join(res.problems)))
        qa_datasets = sorted(res.qa_summary["dataset"].astype(str).unique()) if res.qa_summary is not None else []
        dataset = dataset if dataset in qa_datasets else "All"
        shown = lambda f: gr.update(value=self._rounded(f), visible=True) if f is not None else no_table  # noqa: E731
        qa_table, rec_table = shown(results.qa_table(res.qa_summary)), shown(res.reconstruction)
        pvo, extra = shown(results.paper_table(res.paper_vs_ours)), results.extra_tables_html(res)
        sample_sets = ["All", *res.datasets]
        methods = ["All", *res.sample_methods]
        return (
            msg, qa_table, charts.qa_metrics_figure(res.qa_summary, dataset), charts.bleu_length_figure(res.reconstruction),
            rec_table, pvo, extra, gr.update(choices=["All", *qa_datasets], value=dataset),
            gr.update(choices=sample_sets, value="All"), gr.update(choices=methods, value="All"),
            gr.update(visible=bool(res.samples)),
        )

    @staticmethod
    def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.copy()
        for col in out.columns:
            if pd.api.types.is_float_dtype(out[col]):
                out[col] = out[col].round(4)
        return out

    @friendly_errors
    def qa_chart(self, dataset: str | None):
        res = load_results(self.results_dir)
        return charts.qa_metrics_figure(res.qa_summary, dataset)

    @friendly_errors
    def samples(self, dataset: str, method: str, metric: str, min_score: float, max_score: float):
        res = load_results(self.results_dir)
        if not res.samples:
            return pd.DataFrame(), gr.update(choices=[], value=None), "No per-sample results (qa_samples.jsonl) yet."
        lo, hi = float(min_score or 0.0), float(1.0 if max_score is None else max_score)
        if lo > hi:
            raise UserInputError(f"The minimum score ({lo}) is above the maximum ({hi}).")
        metric = metric if metric in QA_METRICS else "rougeL_f"
        found = filter_samples(res.samples, dataset, method, metric, lo, hi)
        table = results.sample_table(found[:500], res.sample_methods, metric)
        ids = list(table["id"]) if not table.empty else []
        note = f"{len(found)} of {len(res.samples)} samples match" + (" (showing 500)" if len(found) > 500 else "") + "."
        return table, gr.update(choices=ids, value=ids[0] if ids else None), note

    @friendly_errors
    def sample(self, sample_id: str | None):
        res = load_results(self.results_dir)
        match = next((s for s in res.samples if str(s.get("id")) == str(sample_id)), None)
        blank = ("", "", "", *[gr.update(value="", label=label(m)) for m in ANSWER_METHODS], {})
        if match is None:
            return blank
        answers = match.get("answers", {})
        cols = order_methods(answers)[:3]
        while len(cols) < 3:
            cols.append("")
        outs = []
        for m in cols:
            a = answers.get(m, {}) if m else {}
            scores = ", ".join(f"{k} {float(a[k]):.3f}" for k in QA_METRICS if isinstance(a.get(k), (int, float)))
            outs.append(gr.update(value=str(a.get("text", "")), label=f"{label(m)}" + (f" — {scores}" if scores else "")
                                  if m else "—"))
        return str(match.get("context", "")), str(match.get("question", "")), str(match.get("reference", "")), *outs, match
