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
import queue
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import pandas as pd
from transformers.generation import BaseStreamer

from . import charts, speed
from .about import PROFILE_CHOICE_HTML
from .examples import Example
from .presentation import (
    banner, bench_runs_html, device_label, esc, fmt_count, fmt_flops, fmt_ratio, fmt_seconds, label, memory_label,
    profiles_table, speedup_html, table_html, timing_card, tokens_to_vectors, word_diff,
)
from .results import (
    QA_METRICS, filter_samples, load_bench_meta, load_bench_results, load_results, order_methods, sample_score,
)
from .service import ModelService

log = logging.getLogger(__name__)

COMPRESSORS = ("icformer", "icae")  # methods that actually compress (the "full" context is the reference)
ANSWER_METHODS = ("icformer", "icae", "full")  # the three Ask columns, in order
CHARS_PER_TOKEN_BOUND = 20  # same bound the library uses to refuse a huge paste before tokenising
DOWNLOAD_TTL_S = 3600
REFERENCE_LENGTHS = [128, 256, 512, 1024, 2048, 4096]


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


def check_text(text: Any, what: str, max_chars: int | None = None) -> str:
    """Cheap checks before any model work: a string, not empty, not huge, not binary junk."""
    if text is None:
        text = ""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise UserInputError(f"The {what} must be text.")
    if not text.strip():
        raise UserInputError(f"The {what} is empty. Paste some text or pick an example.")
    if max_chars is not None and len(text) > max_chars:
        raise UserInputError(
            f"The {what} is too long: {len(text):,} characters; this demo accepts up to {max_chars:,}. "
            "Shorten it, or use the library directly for longer inputs."
        )
    sample = text[:20000]
    junk = sum(1 for ch in sample if ch == "\ufffd" or (ord(ch) < 32 and ch not in "\t\n\r") or 0x7F <= ord(ch) < 0xA0)
    if junk > max(8, 0.1 * len(sample)):
        raise UserInputError(
            f"The {what} looks like binary data ({junk} of its first {len(sample):,} characters are control or "
            "undecodable bytes). Paste plain text."
        )
    return text


# ---------------------------------------------------------------------- streaming helper


class QueueStreamer(BaseStreamer):
    """A transformers streamer that posts the decoded answer-so-far onto a queue."""

    def __init__(self, tokenizer, events: queue.Queue, method: str) -> None:
        self.tokenizer, self.events, self.method = tokenizer, events, method
        self.ids: list[int] = []
        self._prompt_seen = False
        self._last = 0.0

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first reports the prompt ids (none: we pass embeddings)
            self._prompt_seen = True
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        now = time.perf_counter()
        if now - self._last > 0.08:  # at most ~12 UI updates a second
            self._last = now
            self.events.put(("partial", self.method, self.tokenizer.decode(self.ids, skip_special_tokens=True)))

    def end(self) -> None:
        self.events.put(("partial", self.method, self.tokenizer.decode(self.ids, skip_special_tokens=True)))


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
        self.max_chars = max_context_tokens * CHARS_PER_TOKEN_BOUND
        self.download_dir = Path(download_dir or Path(tempfile.gettempdir()) / "icformer-app-downloads")

    # ------------------------------------------------------------------ shared pieces

    def _waiter(self, progress) -> Callable[[float], None]:
        def wait(seconds: float) -> None:
            progress(0.05, desc=f"Loading the model (first use, {seconds:.0f} s)…")

        return wait

    def _tokenize(self, cc, text: str) -> list[int]:
        ids = cc.tokenize(text)  # the library cleans the text and raises ValueError with a clear message
        if len(ids) > self.max_context_tokens:
            raise UserInputError(
                f"The context is too long: {len(ids):,} tokens; this demo accepts up to {self.max_context_tokens:,} "
                "tokens. Shorten it, or use the library directly."
            )
        return ids

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
        text = check_text(text, "context", self.max_chars)
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
                label(m), f"{z.num_tokens} → {z.num_vectors} ({z.compression_ratio:.1f}×)", fmt_seconds(secs),
                fmt_flops(flops.get(m)), memory_label(meta.get("memory_bytes"), meta.get("memory_kind")),
                device_label(meta.get("device")), "yes" if z.trained else "no (noise)",
            ])
        icf, icae = summary.get("icformer", {}), summary.get("icae", {})
        if icf and icae and icf["compress_s"] > 0:
            summary["speedup"] = icae["compress_s"] / icf["compress_s"]
            if icf.get("flops") and icae.get("flops"):
                summary["flops_ratio"] = icae["flops"] / icf["flops"]
        z0 = state.contexts[methods[0]]
        headline = tokens_to_vectors(z0.num_tokens, z0.num_vectors, methods[0])
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
            progress=gr.Progress()):
        text = check_text(text, "context", self.max_chars)
        question = check_text(question, "question", 4000)
        max_new = int(max(1, min(int(max_new_tokens or 64), 512)))
        events: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                with self.service.session(lambda s: events.put(("loading", s))) as cc:
                    nonlocal_state = self._ensure_contexts(cc, text, state, COMPRESSORS)
                    events.put(("state", list(cc.methods()), nonlocal_state))
                    # The full context's own embeddings: a lookup, so made per question, not kept in the session.
                    sources = dict(nonlocal_state.contexts, full=cc.compress(text, method="full"))
                    for m in ANSWER_METHODS:
                        if m not in sources:
                            continue
                        events.put(("start", m, None))
                        streamer = QueueStreamer(cc.tokenizer, events, m)
                        ans = cc.answer(sources[m], question, max_new_tokens=max_new, streamer=streamer)
                        events.put(("done", m, ans))
            except Exception as err:  # handed to the generator, which raises it in the request
                events.put(("error", err, None))
            events.put(("end", None, None))

        worker = threading.Thread(target=work, name="icformer-ask", daemon=True)
        worker.start()
        texts: dict[str, str] = {}
        cards: dict[str, str] = {}
        answers: dict[str, Any] = {}
        loaded: list[str] = list(ANSWER_METHODS)
        new_state = state
        progress(0.0, desc="Waiting for the model…")
        while True:
            try:
                kind, a, b = events.get(timeout=1.0)
            except queue.Empty:
                if not worker.is_alive():
                    raise RuntimeError("the answering thread stopped unexpectedly")
                continue
            if kind == "loading":
                progress(0.02, desc=f"Loading the model (first use, {a:.0f} s)…")
            elif kind == "state":
                loaded, new_state = a, b
            elif kind == "start":
                todo = [m for m in ANSWER_METHODS if m in loaded]
                progress((todo.index(a)) / len(todo), desc=f"Answering from {label(a)}…")
                cards[a] = '<div class="icf-muted">generating…</div>'
            elif kind == "partial":
                texts[a] = b
                yield self._answer_outputs(loaded, texts, cards, gr.skip(), gr.skip(), gr.skip())
            elif kind == "done":
                answers[a] = b
                texts[a] = b.text or "(empty answer)"
                cards[a] = timing_card(a, b.timings, b.device, self._answer_note(a, b, new_state))
                yield self._answer_outputs(loaded, texts, cards, gr.skip(), gr.skip(), gr.skip())
            elif kind == "error":
                raise a
            elif kind == "end":
                break
        summary = {
            m: dict(text=ans.text, timings=ans.timings, device=ans.device, trained=ans.trained,
                    prompt_positions=ans.prompt_positions, peak_memory_bytes=ans.peak_memory_bytes,
                    num_tokens=new_state.num_tokens if new_state else None)
            for m, ans in answers.items()
        }
        yield self._answer_outputs(loaded, texts, cards, self._ask_headline(answers, question, text), summary, new_state)

    def _answer_note(self, method: str, ans, state: SessionContexts | None) -> str:
        note = f"<div class='icf-muted'>LLM read {ans.prompt_positions} positions"
        if state is not None and method in state.contexts and method != "full":
            z = state.contexts[method]
            note += f" ({z.num_vectors} vectors instead of {z.num_tokens} tokens)"
        note += "</div>"
        if not ans.trained:
            note += "<div class='icf-badge-warn'>untrained: noise</div>"
        return note

    def _ask_headline(self, answers: dict, question: str, text: str) -> str:
        html = ""
        full = answers.get("full")
        for m in COMPRESSORS:
            ans = answers.get(m)
            if ans and full and ans.timings.get("total_s"):
                ratio = full.timings["total_s"] / ans.timings["total_s"]
                if ratio >= 1.05:
                    verdict = f"<b>{fmt_ratio(ratio)} faster</b> end to end"
                elif ratio > 1 / 1.05:
                    verdict = "<b>about as fast</b>"
                else:
                    verdict = f"<b>{fmt_ratio(1 / ratio)} slower</b>"
                html += (
                    f"<div class='icf-muted'>{label(m)}: compress + prefill + decode took "
                    f"{fmt_seconds(ans.timings['total_s'])} vs {fmt_seconds(full.timings['total_s'])} with the full "
                    f"context — {verdict} (answers of different lengths are not directly comparable).</div>"
                )
        return html + self.reference_for(question, text)

    # ------------------------------------------------------------------ reconstruct

    @friendly_errors
    def reconstruct(self, text: str, method: str, max_new_tokens: float, state: SessionContexts | None,
                    progress=gr.Progress()):
        text = check_text(text, "context", self.max_chars)
        method = method if method in COMPRESSORS else "icformer"
        progress(0.0, desc="Waiting for the model…")
        with self.service.session(self._waiter(progress)) as cc:
            if method not in cc.methods():
                raise UserInputError(f"{label(method)} is not loaded; choose {label('icformer')}.")
            state = self._ensure_contexts(cc, text, state, (method,), progress)
            z = state.contexts[method]
            limit = int(max_new_tokens or 0) or z.num_tokens + 16
            progress(0.5, desc=f"Decoding {z.num_vectors} {label(method)} vectors back to text…")
            result = cc.reconstruct(z, max_new_tokens=min(limit, z.num_tokens + 16))
        from icformer.metrics import sentence_bleu

        original = " ".join(text.split())
        bleu = sentence_bleu(result.text, original) if result.text.strip() else 0.0
        spans, counts = word_diff(original, result.text)
        capped = limit < z.num_tokens + 16
        stats = (
            f'<div class="icf-stats"><div><span class="icf-big">{bleu:.3f}</span> BLEU-4</div>'
            f'<div><span class="icf-big">{counts["same"]}</span> words kept</div>'
            f'<div><span class="icf-big">{counts["missing"]}</span> missing</div>'
            f'<div><span class="icf-big">{counts["added"]}</span> added</div></div>'
            f"<div class='icf-muted'>{z.num_tokens} tokens → {z.num_vectors} vectors → {len(result.token_ids)} tokens "
            f"decoded in {fmt_seconds(result.timings.get('prefill_s', 0) + result.timings.get('decode_s', 0))} "
            f"on {esc(device_label(result.device))}."
            + (f" Decoding was capped at {limit} new tokens, so the tail counts as missing." if capped else "")
            + "</div>"
        )
        if not result.trained:
            stats += banner("warn", "Untrained compressor: expect noise; BLEU near 0 is the correct result here.")
        summary = dict(method=method, bleu=bleu, text=result.text, num_tokens=z.num_tokens,
                       num_vectors=z.num_vectors, timings=result.timings, device=result.device,
                       trained=result.trained, diff_counts=counts)
        return spans, stats, result.text, summary, state

    # ------------------------------------------------------------------ attention

    @friendly_errors
    def attention(self, text: str, progress=gr.Progress()):
        """IC-Former's digest attention over the context's first chunk: heatmap, band numbers, JSON."""
        from icformer.attention import context_attention

        text = check_text(text, "context", self.max_chars)
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
        bench_dir = self.results_dir / "bench"
        committed, problems = load_bench_results(bench_dir)
        if committed is None:
            note = f"No committed benchmark results in `{bench_dir}` yet (`python -m icformer bench --out {bench_dir}`)."
        else:
            metas = load_bench_meta(bench_dir)
            where = "; ".join(
                f"{m.get('device_name', m.get('device', '?'))} ({m.get('device', '?')}, {m.get('dtype', '?')}"
                + (f", {m['threads']} threads" if m.get("threads") else "") + ")"
                + (f", {m['date'][:10]}" if m.get("date") else "")
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
        flops = speed.flops_curve(self.service.get(), REFERENCE_LENGTHS) if self.service.info else None
        runs = speed.committed_runs(self.results_dir / "bench")
        return (charts.speed_figure(None, committed, log=log_scale), charts.flops_figure(flops, log=log_scale), note,
                bench_runs_html(runs, speed.paper_speed_rows()))

    @friendly_errors
    def bench(self, lengths: list, log_scale: bool, progress=gr.Progress()):
        try:
            lengths = sorted({int(x) for x in (lengths or [])})
        except (TypeError, ValueError):
            raise UserInputError("Context lengths must be whole numbers of tokens.") from None
        if not lengths:
            raise UserInputError("Choose at least one context length.")
        if min(lengths) < 1 or max(lengths) > self.max_context_tokens:
            raise UserInputError(f"Context lengths must be between 1 and {self.max_context_tokens} tokens.")
        available, why = speed.bench_available()
        if not available:
            raise UserInputError(why)
        progress(0.0, desc="Waiting for the model…")
        with self.service.session(self._waiter(progress)) as cc:
            available, why = speed.bench_available(cc)
            if not available:
                raise UserInputError(why)
            live = speed.run_quick_benchmark(cc, lengths, progress)
        committed, note = self._committed_note()
        flops = speed.flops_curve(cc, lengths)
        table = pd.DataFrame({
            "method": live["method"].map(label),
            "tokens": live["length"].astype(int),
            "compress": live["compress_s"].map(lambda v: fmt_seconds(v) if v else "–"),
        })
        if "speedup_vs_icae" in live:
            table["IC-Former speed-up"] = live["speedup_vs_icae"].map(lambda v: fmt_ratio(v) if pd.notna(v) else "–")
        if "prefill_s" in live:
            table["LLM prefill"] = live["prefill_s"].map(lambda v: fmt_seconds(v) if pd.notna(v) else "–")
        if "flops_exact" in live:
            table["FLOPs"] = live["flops_exact"].map(lambda v: fmt_flops(v) if pd.notna(v) else "–")
        if "memory_bytes" in live:
            table["memory"] = [memory_label(b, k) if pd.notna(b) else "–"
                               for b, k in zip(live["memory_bytes"], live.get("memory_kind", [None] * len(live)))]
        if "device" in live:
            table["device"] = live["device"].map(device_label)
        rows = live.astype(object).where(live.notna(), None).to_dict(orient="records")
        fig = charts.speed_figure(live, committed, log=log_scale)
        return fig, charts.flops_figure(flops, log=log_scale), gr.update(value=table, visible=True), rows, live

    def replot(self, live, log_scale: bool):
        committed, _ = self._committed_note()
        flops = None
        if self.service.info is not None:
            lengths = sorted(set(int(x) for x in live["length"])) if live is not None else REFERENCE_LENGTHS
            flops = speed.flops_curve(self.service.get(), lengths)
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
        info = []
        if res.meta:
            info.append(" · ".join(f"<b>{esc(k)}</b>: {esc(v)}" for k, v in res.meta.items()))
        info.append(f"from <code>{esc(res.directory)}</code>")
        msg = banner("ok", " — ".join(info))
        if res.problems:
            msg += banner("warn", "Could not read: " + esc("; ".join(res.problems)))
        qa_datasets = sorted(res.qa_summary["dataset"].astype(str).unique()) if res.qa_summary is not None else []
        dataset = dataset if dataset in qa_datasets else "All"
        shown = lambda f: gr.update(value=self._rounded(f), visible=True) if f is not None else no_table  # noqa: E731
        qa_table, rec_table, pvo = shown(res.qa_summary), shown(res.reconstruction), shown(res.paper_vs_ours)
        extra = "".join(
            f"<h4>{esc(name)}</h4>" + frame.head(200).to_html(index=False, classes="icf-table", border=0, escape=True)
            for name, frame in res.extra_tables.items()
        )
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
        methods = res.sample_methods
        rows = []
        for s in found[:500]:
            row = {"id": s["id"], "dataset": s.get("dataset"), "question": str(s.get("question", ""))[:120]}
            for m in methods:
                score = sample_score(s, m, metric)
                row[f"{label(m)} {metric}"] = round(score, 3) if score is not None else None
            rows.append(row)
        ids = [r["id"] for r in rows]
        note = f"{len(found)} of {len(res.samples)} samples match" + (" (showing 500)" if len(found) > 500 else "") + "."
        return pd.DataFrame(rows), gr.update(choices=ids, value=ids[0] if ids else None), note

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
