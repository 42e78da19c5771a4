"""The Compress & Ask tab: an example or pasted context, compressed by each method (with its
time, FLOPs, memory and a download), then the questions of `ask.AskSection` about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from icformer.compare import compression_speedups

from .. import speed
from ..presentation import COMPRESS_HINT_HTML, compression_html, label, source_markdown
from .ask import SUGGESTED_BUTTONS, AskSection
from .common import (
    COMPRESSORS, Runner, SessionContexts, Shared, Tab, View, context_key, friendly_errors, listen,
)


@dataclass
class CompressView(View):
    headline: str
    table: str
    download_icformer: Any
    download_icae: Any
    summary: dict
    session: SessionContexts


@dataclass
class ExampleView(View):
    context: Any
    suggested_1: Any
    suggested_2: Any
    suggested_3: Any
    source: str


@dataclass
class QuestionView(View):
    question: str
    ask_headline: str


class CompressTab(Tab):
    """Layout and handlers of the first tab; `ask` is its lower half."""

    def __init__(self, shared: Shared) -> None:
        super().__init__(shared)
        self.ask = AskSection(shared)

    # ------------------------------------------------------------------ layout

    def layout(self, session: gr.State) -> None:
        c = self.c
        c["session"] = session
        with gr.Tab("Compress & Ask", id="compress"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=5):
                    c["example"] = gr.Dropdown(
                        choices=list(self.shared.examples), value=None, label="Example context",
                        info="Pick one, or paste your own text below.",
                    )
                    c["source"] = gr.Markdown(elem_id="icf-source")
                    c["context"] = gr.Textbox(
                        label="Context", lines=11, max_lines=18, elem_id="icf-context",
                        placeholder="Paste a context here (a few paragraphs work best)…",
                    )
                    c["compress_btn"] = gr.Button("Compress", variant="primary", elem_id="icf-compress")
                with gr.Column(scale=6):
                    c["headline"] = gr.HTML(COMPRESS_HINT_HTML, label="headline", show_label=False,
                                            elem_id="icf-headline")
                    c["table"] = gr.HTML(label="table", show_label=False, elem_id="icf-comp-table")
                    with gr.Row():
                        for m in COMPRESSORS:
                            c[f"download_{m}"] = gr.DownloadButton(f"Download {label(m)} context", visible=False,
                                                                   size="sm", elem_id=f"icf-download-{m}")
                    with gr.Accordion("Raw numbers (JSON)", open=False):
                        c["summary"] = gr.JSON(label="compression summary")
            self.ask.layout(c["context"], session)
        # The example fills the ask section's question buttons; a question button, its headline.
        c.update({name: self.ask.c[name] for name in ("question", "ask_headline", *SUGGESTED_BUTTONS)})

    @property
    def model_buttons(self) -> list:
        return [self.c["compress_btn"], self.ask.c["ask_btn"]]

    def wire(self, run: Runner) -> None:
        c = self.c
        listen(c["example"].change, self.pick_example, c["example"], ExampleView, c, api_name="example")
        for name in SUGGESTED_BUTTONS:
            listen(c[name].click, self.pick_question, [c[name], c["context"]], QuestionView, c, **Runner.PRIVATE)
        # One progress bar per run, on the output it is about.
        run.run_locked([c["compress_btn"].click], self.compress, [c["context"], c["session"]], CompressView, c,
                       "compress", "quick", [c["headline"]])
        self.ask.wire(run)

    # ------------------------------------------------------------------ handlers

    def pick_example(self, title: str | None) -> ExampleView:
        """An example's text, its first questions as buttons, and where it comes from."""
        ex = self.shared.examples.get(title or "")
        if ex is None:
            hidden = gr.update(visible=False)
            return ExampleView(gr.skip(), hidden, hidden, hidden, "")
        buttons = [gr.update(value=ex.questions[i][0], visible=True) if i < len(ex.questions)
                   else gr.update(visible=False) for i in range(len(SUGGESTED_BUTTONS))]
        return ExampleView(ex.text, *buttons, source_markdown(ex.source))

    def pick_question(self, question: str, text: str) -> QuestionView:
        return QuestionView(question, self.shared.reference_for(question, text))

    @friendly_errors
    def compress(self, text: str, state: SessionContexts | None, progress=gr.Progress()) -> CompressView:
        """Compress with every loaded compressor (again, when pressed again: it re-measures)."""
        shared = self.shared
        text = shared.context(text)
        progress(0.0, desc="Waiting for the model…")
        with shared.service.session(shared.waiter(progress)) as cc:
            if state is not None and state.key == context_key(text, cc.target.fingerprint):
                state = SessionContexts(key=state.key, num_tokens=state.num_tokens)  # re-measure
            state = shared.ensure_contexts(cc, text, state, COMPRESSORS, progress)
            methods = [m for m in COMPRESSORS if m in state.contexts]
            flops = {m: speed.compression_flops(cc, m, state.num_tokens) for m in methods}
        progress(0.95, desc="Saving the compressed context…")
        state.downloads = {m: shared.save_download(state.contexts[m], m) for m in methods}
        summary: dict[str, Any] = {m: _summary(state.contexts[m], flops.get(m)) for m in methods}
        if "icformer" in summary and "icae" in summary:
            summary.update(compression_speedups(summary["icformer"], summary["icae"]))
        headline, table = compression_html(summary)
        downloads = [
            gr.update(value=state.downloads[m], visible=True, label=f"Download {label(m)} context (.safetensors)")
            if m in state.downloads else gr.update(value=None, visible=False)
            for m in COMPRESSORS
        ]
        return CompressView(headline, table, *downloads, summary, state)


def _summary(z, flops: float | None) -> dict:
    """One compressed context's numbers, as the JSON output shows them."""
    meta = z.metadata
    return dict(
        num_tokens=z.num_tokens, num_vectors=z.num_vectors, num_chunks=meta.get("num_chunks"),
        k=meta.get("k"), L=meta.get("L"), compress_s=z.timings.get("compress_s", 0.0), flops=flops,
        memory_bytes=meta.get("memory_bytes"), memory_kind=meta.get("memory_kind"),
        device=meta.get("device"), trained=z.trained,
    )
