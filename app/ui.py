"""The page: its theme and CSS, the header and model status, and the tabs of ``app/tabs/`` put together.

Each tab module holds its layout and handlers; `app.tabs.common.Shared` (the one model service,
its turn lock, the examples, the limits) is handed to every tab, and `app.tabs.common.Runner`
locks the model buttons of all tabs while any model run is going.

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
                    (0: the context's length + 16), no_repeat (bool: no        text, summary json
                    3-gram twice), streamed
/attention          context                                                    heatmap plot, stats html,
                                                                               summary json
/bench              lengths (list of "128", "256", …), log_scale               time plot, FLOPs plot,
                                                                               table, rows json
/speed_reference    log_scale                                                  time plot, FLOPs plot, note,
                                                                               committed runs (HTML)
/dashboard          dataset                                                    see tabs.evaluation.DashboardView
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

from .examples import EXAMPLES_DIR, load_examples
from .presentation import header_html
from .results import results_dir as resolve_results_dir
from .service import ModelService, default_factory
from .tabs import AboutTab, CompressTab, EvaluationTab, ReconstructTab, Runner, Shared, SpeedTab

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


def theme() -> gr.themes.Base:
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
    shared = Shared(service, load_examples(examples_dir), resolve_results_dir(results_dir),
                    max_context_tokens=max_context_tokens)
    compress, reconstruct = CompressTab(shared), ReconstructTab(shared)
    speed, evaluation, about = SpeedTab(shared), EvaluationTab(shared), AboutTab(shared)

    with _Demo(title=TITLE, analytics_enabled=False) as demo:
        gr.HTML(header_html(TITLE))
        status = gr.HTML(about.status_banner(), elem_id="icf-status")
        timer = gr.Timer(1.0)
        session = gr.State(None, time_to_live=SESSION_TTL_S)  # this visitor's compressed contexts
        with gr.Tabs():
            compress.layout(session)
            reconstruct.layout(compress.c["context"], session)
            speed.layout()
            evaluation.layout()
            about.layout()

        about.wire(demo, status, timer)
        # Separate groups, so a compress never queues behind decodes; the model itself is shared per turn.
        run = Runner([*compress.model_buttons, *reconstruct.model_buttons, *speed.model_buttons],
                     [compress.ask.c["ask_stop"], reconstruct.c["rec_stop"]],
                     dict(decode=model_concurrency, quick=2, bench=1))
        compress.wire(run)
        reconstruct.wire(run)
        for button in run.stop_buttons:
            button.click(shared.stop, None, None, queue=False, **Runner.PRIVATE)
        speed.wire(run)
        evaluation.wire()
        demo.load(compress.ask.floor_note, None, compress.ask.c["floor_note"], queue=False, **Runner.PRIVATE)

    demo.queue(default_concurrency_limit=4, max_size=128)
    if preload:
        service.start_background()
    demo.icformer_service = service  # for tests and app.py
    return demo
