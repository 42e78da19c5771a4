"""The Gradio Blocks layout and its wiring to :class:`app.handlers.Handlers`.

Endpoints (stable ``api_name``s for ``gradio_client``):

==================  =========================================================  ===========================
api_name            inputs                                                     outputs
==================  =========================================================  ===========================
/compress           context                                                    headline html, table,
                                                                               icformer file, icae file,
                                                                               summary json
/ask                context, question, max_new_tokens                          3 x (answer, timings html),
                                                                               headline html, summary json
/reconstruct        context, method ("icformer"|"icae"), max_new_tokens        diff spans, stats html,
                    (0: the context's length + 16), streamed                   text, summary json
/attention          context                                                    heatmap plot, stats html,
                                                                               summary json
/bench              lengths (list of "128", "256", …), log_scale               time plot, FLOPs plot,
                                                                               table, rows json
/speed_reference    log_scale                                                  time plot, FLOPs plot, note,
                                                                               committed runs (HTML)
/dashboard          dataset                                                    see Handlers.dashboard
/samples            dataset, method, metric, min_score, max_score              table, sample ids, note
/sample             sample_id                                                  context, question,
                                                                               reference, 3 answers, json
/example            example title                                              context, 3 questions, source
/status             —                                                          model status json (profile
                                                                               loaded, asked for, fallback)
==================  =========================================================  ===========================

Every session keeps its compressed contexts in its own ``gr.State``; the model is shared.
Several requests run at once (concurrency groups "decode", "quick" and "bench") and take
turns on the model in arrival order, a decode one token per turn (``service.TurnLock``), so
a compress never waits for a whole reconstruction. /ask and /reconstruct stream; an API
client stops one with ``job.cancel()``, the page with its Stop button (keeping what was
decoded). The app takes no uploads (``MAX_FILE_SIZE``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import gradio as gr

from icformer.compressor import RECONSTRUCTION_MARGIN

from . import about
from .examples import EXAMPLES_DIR, load_examples
from .handlers import ANSWER_METHODS, RECONSTRUCT_MAX_TOKENS, Handlers
from .presentation import DIFF_COLORS, label
from .results import QA_METRICS, find_sample, floor_note_html, load_results, sample_answers_html
from .results import results_dir as resolve_results_dir
from .service import ModelService, default_factory
from .speed import QUICK_LENGTHS

TITLE = "IC-Former: lightning-fast context compression"
SESSION_TTL_S = 2 * 3600  # a visitor's compressed contexts are dropped after two idle hours
MAX_FILE_SIZE = "1mb"  # the app takes no uploads: refuse large ones at the server
DECODE_CONCURRENCY = 4  # ask / reconstruct requests decoding at once, taking turns per token

CSS = """
.gradio-container { max-width: 1320px !important; margin: auto; }
#icf-header h1 { font-size: 1.7rem; margin: 0.2rem 0 0.1rem 0; }
#icf-header p { margin: 0; color: var(--body-text-color-subdued); }
.icf-banner { border-radius: 8px; padding: 8px 12px; margin: 4px 0; font-size: 0.92rem; }
.icf-info { background: #eff6ff; border: 1px solid #bfdbfe; color: #1e3a8a; }
.icf-ok { background: #f0fdf4; border: 1px solid #bbf7d0; color: #14532d; }
.icf-warn { background: #fffbeb; border: 1px solid #fcd34d; color: #78350f; }
.icf-error { background: #fef2f2; border: 1px solid #fca5a5; color: #7f1d1d; }
.icf-spinner { display: inline-block; width: 11px; height: 11px; border: 2px solid #93c5fd;
  border-top-color: #1d4ed8; border-radius: 50%; animation: icf-spin 0.8s linear infinite; margin-right: 6px; }
@keyframes icf-spin { to { transform: rotate(360deg); } }
.icf-t2v { font-size: 1.05rem; margin: 4px 0 10px 0; }
.icf-big { font-size: 1.6rem; font-weight: 700; color: #4f46e5; }
.icf-arrow { font-size: 1.4rem; color: #64748b; margin: 0 4px; }
.icf-muted { color: #64748b; font-size: 0.88rem; margin: 4px 0; }
.icf-speedup { display: flex; align-items: center; gap: 16px; padding: 12px 16px; border-radius: 12px;
  background: linear-gradient(90deg, #eef2ff, #fef3c7); border: 1px solid #c7d2fe; margin: 6px 0; }
.icf-speedup-num { font-size: 3rem; font-weight: 800; color: #4338ca; line-height: 1; white-space: nowrap; }
.icf-speedup-txt { font-size: 0.98rem; color: #1f2937; }
.icf-card { border: 1px solid #e5e7eb; border-top: 4px solid #888; border-radius: 8px; padding: 8px 10px; }
.icf-bar { display: flex; height: 10px; border-radius: 5px; overflow: hidden; background: #f1f5f9; margin-bottom: 6px; }
.icf-seg-compress { background: #4f46e5; } .icf-seg-prefill { background: #f59e0b; } .icf-seg-decode { background: #10b981; }
.icf-card table.icf-times { width: 100%; font-size: 0.86rem; border-collapse: collapse; border: none !important;
  margin: 0; display: table; }
.icf-card table.icf-times tr, .icf-card table.icf-times td { border: none !important; background: transparent !important;
  padding: 1px 4px; }
.icf-card table.icf-times tr + tr td { border-top: 1px solid #f1f5f9 !important; }
.icf-times td:last-child { text-align: right; font-variant-numeric: tabular-nums; }
.icf-badge-warn { display: inline-block; background: #fef3c7; color: #92400e; border-radius: 4px;
  padding: 0 6px; font-size: 0.8rem; margin-top: 4px; }
.icf-stats { display: flex; gap: 28px; flex-wrap: wrap; margin: 4px 0; }
table.icf-table { border-collapse: collapse; font-size: 0.88rem; margin: 4px 0 12px 0; width: 100%; }
table.icf-table th, table.icf-table td { border: 1px solid #e5e7eb; padding: 4px 8px; text-align: left; }
table.icf-table th { background: #f8fafc; font-weight: 600; }
table.icf-table td { font-variant-numeric: tabular-nums; }
.icf-diagram { width: 100%; max-width: 760px; height: auto; display: block; margin: 8px auto; }
.icf-reference { margin: 6px 0; padding: 6px 10px; border-left: 3px solid #10b981; background: #f0fdf4;
  border-radius: 4px; font-size: 0.92rem; }
#icf-model th:first-child, #icf-model td:first-child { white-space: nowrap; }
.icf-legend span { display: inline-block; padding: 0 6px; border-radius: 4px; margin-right: 8px; }
#icf-diff .textfield { word-break: normal; overflow-wrap: break-word; }
"""


class _Demo(gr.Blocks):
    """Blocks that default to this app's theme and CSS at launch (Gradio 6 takes them there)."""

    def launch(self, *args, **kwargs):
        kwargs.setdefault("theme", theme())
        kwargs.setdefault("css", CSS)
        kwargs.setdefault("state_session_capacity", 2000)  # bounds the per-session compressed contexts kept
        kwargs.setdefault("max_file_size", MAX_FILE_SIZE)
        return super().launch(*args, **kwargs)


def theme():
    system = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="amber", font=system,
                          font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])


def build_demo(
    compressor_factory: Callable[[], object] | None = None,
    *,
    results_dir: str | Path | None = None,
    examples_dir: str | Path = EXAMPLES_DIR,
    max_context_tokens: int = 4096,
    model_concurrency: int = DECODE_CONCURRENCY,
    preload: bool = True,
    warm_up: bool = True,
) -> gr.Blocks:
    """The whole app. ``compressor_factory()`` must return an ``icformer.ContextCompressor``;
    it runs once, in a background thread when ``preload`` (else on first use).
    ``model_concurrency``: decodes (ask, reconstruct) running at once, sharing the model per token."""
    service = ModelService(compressor_factory or default_factory(), warm_up=warm_up)
    examples = load_examples(examples_dir)
    h = Handlers(service, examples, resolve_results_dir(results_dir), max_context_tokens=max_context_tokens)
    # Separate groups, so a compress never queues behind decodes; the model itself is shared per turn.
    groups = dict(decode=model_concurrency, quick=2, bench=1)
    private = dict(api_visibility="private")

    with _Demo(title=TITLE, analytics_enabled=False) as demo:
        gr.HTML(
            f"<div id='icf-header'><h1>{TITLE}</h1><p>Compress a long context into a few digest vectors "
            "that a frozen LLM reads as a soft prompt — and compare with ICAE and the full context. "
            "<a href='https://arxiv.org/abs/2406.13618' target='_blank'>arXiv 2406.13618</a></p></div>"
        )
        status = gr.HTML(h.status_banner(), elem_id="icf-status")
        timer = gr.Timer(1.0)
        session = gr.State(None, time_to_live=SESSION_TTL_S)  # this visitor's compressed contexts

        with gr.Tabs():
            # ------------------------------------------------------------ Compress & Ask
            with gr.Tab("Compress & Ask", id="compress"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5):
                        example = gr.Dropdown(
                            choices=[e.title for e in examples], value=None, label="Example context",
                            info="Pick one, or paste your own text below.",
                        )
                        source = gr.Markdown(elem_id="icf-source")
                        context = gr.Textbox(
                            label="Context", lines=11, max_lines=18, elem_id="icf-context",
                            placeholder="Paste a context here (a few paragraphs work best)…",
                        )
                        compress_btn = gr.Button("Compress", variant="primary", elem_id="icf-compress")
                    with gr.Column(scale=6):
                        headline = gr.HTML(
                            "<div class='icf-muted'>Press <b>Compress</b> to see tokens → vectors, each method's "
                            "compression time, FLOPs and memory.</div>",
                            label="headline", show_label=False, elem_id="icf-headline",
                        )
                        comp_table = gr.HTML(label="table", show_label=False, elem_id="icf-comp-table")
                        with gr.Row():
                            dl_icformer = gr.DownloadButton("Download IC-Former context", visible=False, size="sm",
                                                            elem_id="icf-download-icformer")
                            dl_icae = gr.DownloadButton("Download ICAE context", visible=False, size="sm",
                                                        elem_id="icf-download-icae")
                        with gr.Accordion("Raw numbers (JSON)", open=False):
                            comp_json = gr.JSON(label="compression summary")

                gr.Markdown("### Ask about the compressed context")
                with gr.Row(equal_height=True):
                    question = gr.Textbox(label="Question", placeholder="e.g. Who is the narrator?", scale=6,
                                          elem_id="icf-question")
                    max_new = gr.Slider(8, 256, value=48, step=8, label="max new tokens", scale=2)
                    ask_btn = gr.Button("Ask", variant="primary", scale=1, elem_id="icf-ask")
                    ask_stop = gr.Button("Stop", variant="stop", scale=0, min_width=80, interactive=False,
                                         elem_id="icf-ask-stop")
                with gr.Row():
                    q_buttons = [gr.Button(visible=False, size="sm", variant="secondary") for _ in range(3)]
                ask_headline = gr.HTML(label="headline", show_label=False, elem_id="icf-ask-headline")
                # Read from the committed evaluation: shown while the compressors score near their floors.
                floor_note = gr.HTML(floor_note_html(load_results(h.results_dir)), elem_id="icf-floor-note")
                answer_boxes, answer_cards = [], []
                with gr.Row(equal_height=False):
                    for m in ANSWER_METHODS:
                        with gr.Column(min_width=260):
                            sub = {"icformer": "from the digest vectors", "icae": "from the memory slots",
                                   "full": "reads every context token"}[m]
                            answer_boxes.append(gr.Textbox(label=f"{label(m)} — {sub}", lines=5, max_lines=12,
                                                           interactive=False, elem_id=f"icf-answer-{m}"))
                            answer_cards.append(gr.HTML(label=f"{m} timings", show_label=False,
                                                        elem_id=f"icf-card-{m}"))
                with gr.Accordion("Raw answers (JSON)", open=False):
                    ask_json = gr.JSON(label="answers")

            # ------------------------------------------------------------ Reconstruct
            with gr.Tab("Reconstruct", id="reconstruct"):
                gr.Markdown(
                    "Decode the compressed vectors of the **context from the Compress & Ask tab** back into text "
                    "(the autoencoding task IC-Former is pre-trained on). "
                    "<span style='background:#fca5a5;padding:0 4px;border-radius:3px'>missing</span> words are "
                    "in the original but not reproduced; "
                    "<span style='background:#86efac;padding:0 4px;border-radius:3px'>added</span> words are produced "
                    "but not in the original."
                )
                with gr.Row():
                    rec_method = gr.Radio(["icformer", "icae"], value="icformer", label="Vectors to decode")
                    rec_max = gr.Slider(0, RECONSTRUCT_MAX_TOKENS, value=0, step=16, label="max new tokens",
                                        info=f"0: the context's own length plus {RECONSTRUCTION_MARGIN}, enough for "
                                             f"all of it (at most {RECONSTRUCT_MAX_TOKENS:,}). The text streams as "
                                             "it is decoded.",
                                        elem_id="icf-rec-max")
                    rec_btn = gr.Button("Reconstruct", variant="primary", elem_id="icf-reconstruct")
                    rec_stop = gr.Button("Stop", variant="stop", interactive=False, elem_id="icf-rec-stop")
                rec_stats = gr.HTML(label="stats", show_label=False, elem_id="icf-rec-stats")
                rec_diff = gr.HighlightedText(label="Word-level difference from the original", color_map=DIFF_COLORS,
                                              show_legend=True, combine_adjacent=True, elem_id="icf-diff")
                with gr.Accordion("Reconstructed text", open=False):
                    rec_text = gr.Textbox(label="reconstructed text", show_label=False, lines=6, interactive=False)
                    rec_json = gr.JSON(label="reconstruction summary")
                with gr.Accordion("Where the digests look (IC-Former attention)", open=False):
                    att_btn = gr.Button("Show attention", elem_id="icf-attention")
                    att_plot = gr.Plot(label="heatmap", show_label=False, elem_id="icf-attention-plot")
                    att_stats = gr.HTML(label="stats", show_label=False, elem_id="icf-attention-stats")
                    att_json = gr.JSON(label="attention summary")

            # ------------------------------------------------------------ Speed
            with gr.Tab("Speed", id="speed") as speed_tab:
                gr.Markdown(
                    "Compression time against context length, live on this machine in quick mode (solid), beside "
                    "committed full benchmark runs (dashed) and the analytic FLOPs. Contexts are split into chunks, "
                    "so both methods grow linearly with the context: ICAE runs the whole LLM over every chunk and "
                    "its memory slots, IC-Former 3 small cross-attention layers over the chunk's word embeddings. "
                    "The FLOPs chart shows the constant factor between them."
                )
                with gr.Row():
                    # Strings: the API documents a checkbox group's values as strings, and so takes them.
                    lengths = gr.CheckboxGroup([str(n) for n in QUICK_LENGTHS + [4096]], value=["128", "256", "512"],
                                               label="context lengths (tokens)", scale=4,
                                               info="On a CPU, each length takes 10–60 s (ICAE runs the whole LLM).")
                    log_scale = gr.Checkbox(value=True, label="log–log axes", scale=1)
                    bench_btn = gr.Button("Run quick benchmark", variant="primary", scale=1, elem_id="icf-bench")
                speed_note = gr.Markdown(label="note")
                with gr.Row():
                    speed_plot = gr.Plot(label="compression time")
                    flops_plot = gr.Plot(label="FLOPs")
                bench_table = gr.Dataframe(label="live quick benchmark", interactive=False, visible=False)
                bench_runs = gr.HTML(label="committed runs", show_label=False, elem_id="icf-bench-runs")
                with gr.Accordion("Raw rows (JSON)", open=False):
                    bench_json = gr.JSON(label="rows")
                live_rows = gr.State(None)

            # ------------------------------------------------------------ Evaluation
            with gr.Tab("Evaluation", id="evaluation") as eval_tab:
                with gr.Row(equal_height=False):
                    eval_status = gr.HTML(elem_id="icf-eval-status", scale=4)
                    qa_dataset = gr.Dropdown(["All"], value="All", label="QA chart: dataset", scale=1, min_width=160)
                    refresh_btn = gr.Button("Refresh", size="sm", scale=0, min_width=100)
                with gr.Row(equal_height=False):
                    qa_plot = gr.Plot(label="QA metrics by method", elem_id="icf-qa-plot")
                    bleu_plot = gr.Plot(label="reconstruction BLEU vs length", elem_id="icf-bleu-plot")
                qa_table = gr.Dataframe(label="Question answering summary", interactive=False, visible=False)
                rec_table = gr.Dataframe(label="Reconstruction by length", interactive=False, visible=False)
                pvo_table = gr.Dataframe(label="Paper vs ours", interactive=False, visible=False)
                extra_tables = gr.HTML()
                with gr.Column(visible=False) as sample_group:
                    gr.Markdown("#### Per-sample browser")
                    with gr.Row():
                        # Custom values: the API filters by any dataset or method without opening the tab first.
                        s_dataset = gr.Dropdown(["All"], value="All", label="dataset", allow_custom_value=True)
                        s_method = gr.Dropdown(["All"], value="All", label="score of method", allow_custom_value=True)
                        s_metric = gr.Dropdown(QA_METRICS, value="rougeL_f", label="metric")
                        s_min = gr.Slider(0, 1, value=0, step=0.05, label="min score")
                        s_max = gr.Slider(0, 1, value=1, step=0.05, label="max score")
                    s_note = gr.Markdown()
                    s_table = gr.Dataframe(interactive=False, max_height=260, wrap=True)
                    # Custom values: /sample takes any id, without a /samples call first; unknown ones show nothing.
                    s_id = gr.Dropdown([], label="sample", allow_custom_value=True)
                    with gr.Row():
                        s_context = gr.Textbox(label="context", lines=6, max_lines=10, interactive=False, scale=3)
                        with gr.Column(scale=2):
                            s_question = gr.Textbox(label="question", interactive=False)
                            s_reference = gr.Textbox(label="reference answer", interactive=False)
                    # /sample's three answers stay its outputs; the table below shows every method and floor.
                    s_answers = [gr.Textbox(label=label(m), lines=4, interactive=False, visible=False)
                                 for m in ANSWER_METHODS]
                    s_answers_html = gr.HTML(elem_id="icf-sample-answers-box")
                    with gr.Accordion("Raw sample (JSON)", open=False):
                        s_json = gr.JSON(label="sample")

            # ------------------------------------------------------------ About
            with gr.Tab("About", id="about"):
                gr.Markdown(about.METHOD_MD)
                gr.HTML(about.DIAGRAM_SVG)
                gr.Markdown("### What is loaded")
                about_model = gr.Markdown(h.model_markdown(), elem_id="icf-model")
                gr.Markdown("### Model profiles")
                about_profiles = gr.HTML(h.profiles_html(), elem_id="icf-profiles")
                gr.Markdown(about.LIMITATIONS_MD)
                gr.Markdown(about.CITATIONS_MD)

        # ---------------------------------------------------------------- wiring
        model_buttons = [compress_btn, ask_btn, rec_btn, att_btn, bench_btn]
        stop_buttons = [ask_stop, rec_stop]

        def lock():
            return [gr.update(interactive=False) for _ in model_buttons] + [gr.update(interactive=True)] * 2

        def unlock():
            return [gr.update(interactive=True) for _ in model_buttons] + [gr.update(interactive=False)] * 2

        def blank(component):
            """An output's empty value: a run starts from nothing, so an error never sits above an old result."""
            if isinstance(component, gr.DownloadButton):
                return gr.update(value=None, visible=False)
            return gr.update(value=None)

        def run_locked(triggers, fn, inputs, outputs, api_name, group, progress_on=None):
            shown = [o for o in outputs if not isinstance(o, gr.State)]
            ev = gr.on(triggers, lambda: [*lock(), *map(blank, shown)], None, [*model_buttons, *stop_buttons, *shown],
                       queue=False, **private)
            main = ev.then(fn, inputs, outputs, api_name=api_name, concurrency_id=group,
                           concurrency_limit=groups[group], show_progress_on=progress_on)
            # Gradio 6.31's page skips .then() after an error, so re-enable on failure explicitly too.
            main.then(unlock, None, [*model_buttons, *stop_buttons], queue=False, **private)
            main.failure(unlock, None, [*model_buttons, *stop_buttons], queue=False, **private)
            return main

        def tick():
            done = service.state in ("ready", "error")
            return h.status_banner(), h.model_markdown(), h.profiles_html(), gr.Timer(active=not done)

        status_outputs = [status, about_model, about_profiles, timer]
        timer.tick(tick, None, status_outputs, queue=False, **private)
        demo.load(tick, None, status_outputs, queue=False, **private)
        gr.api(h.status, api_name="status")

        example.change(h.pick_example, example, [context, *q_buttons, source], api_name="example")
        for b in q_buttons:
            b.click(h.pick_question, [b, context], [question, ask_headline], **private)

        # One progress bar per run, on the output it is about.
        run_locked([compress_btn.click], h.compress, [context, session],
                   [headline, comp_table, dl_icformer, dl_icae, comp_json, session], "compress", "quick", [headline])
        ask_outputs = [x for pair in zip(answer_boxes, answer_cards) for x in pair]
        run_locked([ask_btn.click, question.submit], h.ask, [context, question, max_new, session],
                   [*ask_outputs, ask_headline, ask_json, session], "ask", "decode", [ask_headline])
        run_locked([rec_btn.click], h.reconstruct, [context, rec_method, rec_max, session],
                   [rec_diff, rec_stats, rec_text, rec_json, session], "reconstruct", "decode", [rec_stats])
        run_locked([att_btn.click], h.attention, [context], [att_plot, att_stats, att_json], "attention", "quick",
                   [att_plot])
        run_locked([bench_btn.click], h.bench, [lengths, log_scale],
                   [speed_plot, flops_plot, bench_table, bench_json, live_rows], "bench", "bench", [speed_plot])
        for button in stop_buttons:
            button.click(h.stop, None, None, queue=False, **private)

        speed_tab.select(h.speed_reference, log_scale, [speed_plot, flops_plot, speed_note, bench_runs],
                         api_name="speed_reference")
        log_scale.change(h.replot, [live_rows, log_scale], [speed_plot, flops_plot], **private)

        dash_outputs = [eval_status, qa_table, qa_plot, bleu_plot, rec_table, pvo_table, extra_tables,
                        qa_dataset, s_dataset, s_method, sample_group]
        sample_inputs = [s_dataset, s_method, s_metric, s_min, s_max]
        sample_outputs = [s_context, s_question, s_reference, *s_answers, s_json]
        # Public endpoints first: a private event would otherwise take the function's name.
        gr.on([s.input for s in sample_inputs], h.samples, sample_inputs, [s_table, s_id, s_note],
              api_name="samples")
        for trigger, name in ((eval_tab.select, "dashboard"), (refresh_btn.click, "refresh_dashboard")):
            ev = trigger(h.dashboard, qa_dataset, dash_outputs, api_name=name,
                         **({} if name == "dashboard" else private))
            ev.then(h.samples, sample_inputs, [s_table, s_id, s_note], api_name=f"{name}_samples", **private)
        qa_dataset.input(h.qa_chart, qa_dataset, qa_plot, **private)
        s_id.change(h.sample, s_id, sample_outputs, api_name="sample")
        s_id.change(lambda sample_id: sample_answers_html(find_sample(load_results(h.results_dir), sample_id)),
                    s_id, s_answers_html, **private)
        demo.load(lambda: floor_note_html(load_results(h.results_dir)), None, floor_note, queue=False, **private)

        def pick_row(evt: gr.SelectData):
            row = evt.row_value or []
            return row[0] if row else gr.skip()

        s_table.select(pick_row, None, s_id, **private)

    demo.queue(default_concurrency_limit=4, max_size=128)
    if preload:
        service.start_background()
    demo.icformer_service = service  # for tests and app.py
    return demo
