"""The Reconstruct tab: the session's vectors decoded back to text, streamed from
``ContextCompressor.stream_reconstruct``, scored against the original (`icformer.compare`), and
IC-Former's digest attention over the first chunk."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import gradio as gr

from icformer.attention import context_attention
from icformer.compare import reconstruction_score
from icformer.compressor import RECONSTRUCTION_MARGIN
from icformer.generation import NO_REPEAT_NGRAM

from .. import charts
from ..presentation import (
    DIFF_COLORS, RECONSTRUCT_INTRO_MD, attention_html, decoding_note, diff_spans, label, reconstruction_stats,
)
from .common import COMPRESSORS, Runner, SessionContexts, Tab, Throttle, UserInputError, View, friendly_errors


RECONSTRUCT_MAX_TOKENS = 1024  # one request's decode budget: about 35 s of an idle 2-core CPU


def reconstruction_limit(num_tokens: int, requested: float | None) -> int:
    """New tokens for one reconstruction: as asked (0 or None: the context's length plus a margin),
    never more than that, nor than `RECONSTRUCT_MAX_TOKENS`."""
    enough = num_tokens + RECONSTRUCTION_MARGIN
    return max(1, min(int(requested or 0) or enough, enough, RECONSTRUCT_MAX_TOKENS))


@dataclass
class ReconstructView(View):
    diff: Any
    stats: str
    text: str
    rec_summary: Any = field(default_factory=gr.skip)
    session: Any = field(default_factory=gr.skip)


@dataclass
class AttentionView(View):
    attention_plot: Any
    attention_stats: str
    attention_summary: dict


class ReconstructTab(Tab):
    """Decodes the Compress & Ask tab's context from its vectors (the session's, reused when it has them)."""

    def layout(self, context: gr.Textbox, session: gr.State) -> None:
        c = self.c
        c["context"], c["session"] = context, session
        with gr.Tab("Reconstruct", id="reconstruct"):
            gr.Markdown(RECONSTRUCT_INTRO_MD)
            with gr.Row():
                with gr.Column(scale=1, min_width=200):
                    c["method"] = gr.Radio(list(COMPRESSORS), value="icformer", label="Vectors to decode")
                    c["no_repeat"] = gr.Checkbox(
                        value=False, label=f"no repeated {NO_REPEAT_NGRAM}-grams", elem_id="icf-rec-no-repeat",
                        info="Off: plain greedy, as the paper scores it. On: no phrase comes twice, so a "
                             "reconstruction that would loop goes on to what else the vectors hold.",
                    )
                c["max_new"] = gr.Slider(
                    0, RECONSTRUCT_MAX_TOKENS, value=0, step=16, label="max new tokens", elem_id="icf-rec-max",
                    info=f"0: the context's own length plus {RECONSTRUCTION_MARGIN}, enough for all of it (at most "
                         f"{RECONSTRUCT_MAX_TOKENS:,}). The text streams as it is decoded.",
                )
                c["rec_btn"] = gr.Button("Reconstruct", variant="primary", elem_id="icf-reconstruct")
                c["rec_stop"] = gr.Button("Stop", variant="stop", interactive=False, elem_id="icf-rec-stop")
            c["stats"] = gr.HTML(label="stats", show_label=False, elem_id="icf-rec-stats")
            c["diff"] = gr.HighlightedText(label="Word-level difference from the original", color_map=DIFF_COLORS,
                                           show_legend=True, combine_adjacent=True, elem_id="icf-diff")
            with gr.Accordion("Reconstructed text", open=False):
                c["text"] = gr.Textbox(label="reconstructed text", show_label=False, lines=6, interactive=False)
                c["rec_summary"] = gr.JSON(label="reconstruction summary")
            with gr.Accordion("Where the digests look (IC-Former attention)", open=False):
                c["att_btn"] = gr.Button("Show attention", elem_id="icf-attention")
                c["attention_plot"] = gr.Plot(label="heatmap", show_label=False, elem_id="icf-attention-plot")
                c["attention_stats"] = gr.HTML(label="stats", show_label=False, elem_id="icf-attention-stats")
                c["attention_summary"] = gr.JSON(label="attention summary")

    @property
    def model_buttons(self) -> list:
        return [self.c["rec_btn"], self.c["att_btn"]]

    def wire(self, run: Runner) -> None:
        c = self.c
        run.run_locked([c["rec_btn"].click], self.reconstruct, [c["context"], c["method"], c["max_new"], c["no_repeat"],
                                         c["session"]],
                       ReconstructView, c, "reconstruct", "decode", [c["stats"]])
        run.run_locked([c["att_btn"].click], self.attention, [c["context"]], AttentionView, c, "attention", "quick",
                       [c["attention_plot"]])

    # ------------------------------------------------------------------ handlers

    @friendly_errors
    def reconstruct(self, text: str, method: str, max_new_tokens: float, no_repeat: bool,
                    state: SessionContexts | None, request: gr.Request = None,
                    progress=gr.Progress()) -> Iterator[ReconstructView]:
        """Decode the session's vectors back to text, streamed; Stop keeps what was decoded.

        Each token is one turn on the shared model, so other visitors' requests run in between."""
        shared = self.shared
        text = shared.context(text)
        method = method if method in COMPRESSORS else "icformer"
        stop = shared.stop_flag(request)
        began, throttle = time.perf_counter(), Throttle()
        try:
            progress(0.0, desc="Waiting for the model…")
            with shared.service.session(shared.waiter(progress)) as cc:
                if method not in cc.methods():
                    raise UserInputError(f"{label(method)} is not loaded; choose {label('icformer')}.")
                state = shared.ensure_contexts(cc, text, state, (method,), progress)
                z = state.contexts[method]
            limit = reconstruction_limit(z.num_tokens, max_new_tokens)
            blocked = NO_REPEAT_NGRAM if no_repeat else 0
            decode = lambda cc: cc.stream_reconstruct(z, max_new_tokens=limit, no_repeat_ngram=blocked)  # noqa: E731
            for result in shared.stream(decode, stop):
                if throttle.due():
                    done = len(result.token_ids)
                    progress(done / limit, desc=f"Decoding {label(method)} vectors: {done:,} of up to {limit:,} tokens")
                    yield ReconstructView([(result.text, None)] if result.text else [],
                                          decoding_note(done, limit, result.timings, time.perf_counter() - began),
                                          result.text)
        finally:
            shared.drop_stop(request, stop)
        score = reconstruction_score(text, result.text)
        wall = time.perf_counter() - began
        stats = reconstruction_stats(score.bleu, score.counts, z.num_tokens, z.num_vectors, result, limit,
                                     capped=limit < z.num_tokens + RECONSTRUCTION_MARGIN, wall_s=wall,
                                     no_repeat_ngram=blocked)
        summary = dict(method=method, bleu=score.bleu, text=result.text, num_tokens=z.num_tokens,
                       num_vectors=z.num_vectors, timings=result.timings, device=result.device,
                       trained=result.trained, diff_counts=score.counts, max_new_tokens=limit, no_repeat_ngram=blocked,
                       stopped=not result.done, wall_s=wall)
        yield ReconstructView(diff_spans(score.ops), stats, result.text, summary, state)

    @friendly_errors
    def attention(self, text: str, progress=gr.Progress()) -> AttentionView:
        """IC-Former's digest attention over the context's first chunk: heatmap, band numbers, JSON."""
        shared = self.shared
        text = shared.context(text)
        progress(0.0, desc="Waiting for the model…")
        with shared.service.session(shared.waiter(progress)) as cc:
            report = context_attention(cc, text)
        figure = charts.attention_figure(report.tokens, report.weights[-1].tolist(), len(report.layers))
        summary = dict(num_tokens=len(report.tokens), trained=report.trained, layers=[vars(s) for s in report.layers])
        return AttentionView(figure, attention_html(report), summary)
