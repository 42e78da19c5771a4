"""The Speed tab: compression time against context length, live on this machine (quick mode)
beside the committed benchmark runs, and the analytic FLOPs of each compressor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from .. import charts, speed
from ..presentation import bench_runs_html, committed_note, live_bench_unavailable, run_name, speed_table
from ..results import load_bench_meta, load_bench_results
from .common import Runner, Tab, UserInputError, View, friendly_errors, listen


REFERENCE_LENGTHS = [128, 256, 512, 1024, 2048, 4096]
INTRO_MD = (
    "Compression time against context length, live on this machine in quick mode (solid), beside "
    "committed full benchmark runs (dashed) and the analytic FLOPs. Contexts are split into chunks, "
    "so both methods grow linearly with the context: ICAE runs the whole LLM over every chunk and "
    "its memory slots, IC-Former 3 small cross-attention layers over the chunk's word embeddings. "
    "The FLOPs chart shows the constant factor between them."
)


@dataclass
class PlotsView(View):
    speed_plot: Any
    flops_plot: Any


@dataclass
class ReferenceView(PlotsView):
    speed_note: str
    bench_runs: str


@dataclass
class BenchView(PlotsView):
    """/bench's outputs; ``live_rows`` keeps the run (a DataFrame) for replotting on the axes switch."""

    bench_table: Any
    bench_rows: list
    live_rows: Any


class SpeedTab(Tab):
    """Committed runs shown on opening the tab; a live quick benchmark on demand."""

    def layout(self) -> None:
        c = self.c
        with gr.Tab("Speed", id="speed") as c["tab"]:
            gr.Markdown(INTRO_MD)
            with gr.Row():
                # Strings: the API documents a checkbox group's values as strings, and so takes them.
                c["lengths"] = gr.CheckboxGroup([str(n) for n in speed.QUICK_LENGTHS + [4096]],
                                                value=["128", "256", "512"], label="context lengths (tokens)", scale=4,
                                                info="On a CPU, each length takes 10–60 s (ICAE runs the whole LLM).")
                c["log_scale"] = gr.Checkbox(value=True, label="log–log axes", scale=1)
                c["bench_btn"] = gr.Button("Run quick benchmark", variant="primary", scale=1, elem_id="icf-bench")
            c["speed_note"] = gr.Markdown(label="note")
            with gr.Row():
                c["speed_plot"] = gr.Plot(label="compression time")
                c["flops_plot"] = gr.Plot(label="FLOPs")
            c["bench_table"] = gr.Dataframe(label="live quick benchmark", interactive=False, visible=False)
            c["bench_runs"] = gr.HTML(label="committed runs", show_label=False, elem_id="icf-bench-runs")
            with gr.Accordion("Raw rows (JSON)", open=False):
                c["bench_rows"] = gr.JSON(label="rows")
            c["live_rows"] = gr.State(None)

    @property
    def model_buttons(self) -> list:
        return [self.c["bench_btn"]]

    def wire(self, run: Runner) -> None:
        c = self.c
        run.run_locked([c["bench_btn"].click], self.bench, [c["lengths"], c["log_scale"]], BenchView, c, "bench",
                       "bench", [c["speed_plot"]])
        listen(c["tab"].select, self.speed_reference, c["log_scale"], ReferenceView, c, api_name="speed_reference")
        listen(c["log_scale"].change, self.replot, [c["live_rows"], c["log_scale"]], PlotsView, c, **Runner.PRIVATE)

    # ------------------------------------------------------------------ handlers

    def _committed(self) -> tuple[pd.DataFrame | None, str]:
        """Committed benchmark rows, each run named by machine, model and date (not by its file), and their note."""
        bench_dir = self.shared.results_dir / "bench"
        committed, problems = load_bench_results(bench_dir)
        metas = load_bench_meta(bench_dir) if committed is not None else []
        if committed is not None:
            names = {m["source"]: run_name(m) for m in metas}
            committed = committed.assign(source=committed["source"].map(lambda stem: names.get(stem, stem)))
        return committed, committed_note(bench_dir, committed, metas, problems)

    def _flops_lengths(self, live: pd.DataFrame | None = None) -> list[int]:
        """The FLOPs chart's lengths: the reference ones up to this app's limit, plus any live ones."""
        lengths = {n for n in REFERENCE_LENGTHS if n <= self.shared.max_context_tokens}
        if live is not None and "length" in live:
            lengths |= {int(x) for x in live["length"]}
        return sorted(lengths)

    def _plots(self, live: pd.DataFrame | None, committed: pd.DataFrame | None, log_scale: bool, cc=None) -> PlotsView:
        service = self.shared.service
        cc = cc if cc is not None else service.get() if service.info else None
        flops = speed.flops_curve(cc, self._flops_lengths(live)) if cc is not None else None
        return PlotsView(charts.speed_figure(live, committed, log=log_scale), charts.flops_figure(flops, log=log_scale))

    def speed_reference(self, log_scale: bool = True) -> ReferenceView:
        """Committed benchmark results, run by run, and the FLOPs curve (no model run needed)."""
        committed, note = self._committed()
        service = self.shared.service
        available, why = speed.bench_available(service.get() if service.info else None)
        if not available:
            note += live_bench_unavailable(why)
        plots = self._plots(None, committed, log_scale)
        runs = bench_runs_html(speed.committed_runs(self.shared.results_dir / "bench"), speed.paper_speed_rows())
        return ReferenceView(plots.speed_plot, plots.flops_plot, note, runs)

    @friendly_errors
    def bench(self, lengths: list, log_scale: bool, progress=gr.Progress()) -> BenchView:
        """The library's quick benchmark, one length per turn on the shared model."""
        limit = self.shared.max_context_tokens
        try:
            lengths = sorted({int(x) for x in (lengths or [])})
        except (TypeError, ValueError):
            raise UserInputError("Context lengths must be whole numbers of tokens, e.g. \"128\".") from None
        if not lengths:
            raise UserInputError("Choose at least one context length.")
        if min(lengths) < 1 or max(lengths) > limit:
            raise UserInputError(f"Context lengths must be between 1 and {limit:,} tokens.")
        progress(0.0, desc="Waiting for the model…")
        frames = []
        for i, n in enumerate(lengths):
            with self.shared.service.session(self.shared.waiter(progress)) as cc:
                available, why = speed.bench_available(cc)
                if not available:
                    raise UserInputError(why)
                progress(i / len(lengths), desc=f"Benchmarking {n:,} tokens…")
                frames.append(speed.run_quick_benchmark(cc, [n]))
        live = pd.concat(frames, ignore_index=True)
        plots = self._plots(live, self._committed()[0], log_scale, cc)
        rows = live.astype(object).where(live.notna(), None).to_dict(orient="records")
        return BenchView(plots.speed_plot, plots.flops_plot, gr.update(value=speed_table(live), visible=True), rows,
                         live)

    def replot(self, live: pd.DataFrame | None, log_scale: bool) -> PlotsView:
        return self._plots(live, self._committed()[0], log_scale)
