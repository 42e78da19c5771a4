"""The Evaluation tab: the committed results (`app.results` reads them) as charts and tables, and a
per-sample browser. Nothing here runs the model."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from .. import charts, results
from ..presentation import (banner, extra_tables_html, label, meta_table_html, no_results_html, problems_banner,
                            sample_answer_label, sample_answers_html)
from ..results import QA_METRICS, filter_samples, find_sample, load_results, order_methods
from .common import ANSWER_METHODS, Runner, Tab, UserInputError, View, friendly_errors, listen


MAX_ROWS = 500  # samples listed at once


@dataclass
class DashboardView(View):
    eval_status: str
    qa_table: Any
    qa_plot: Any
    bleu_plot: Any
    rec_table: Any
    pvo_table: Any
    extra_tables: str
    qa_dataset: Any
    s_dataset: Any
    s_method: Any
    sample_group: Any


@dataclass
class SamplesView(View):
    s_table: Any
    s_id: Any
    s_note: str


@dataclass
class SampleView(View):
    s_context: str
    s_question: str
    s_reference: str
    s_answer_1: Any
    s_answer_2: Any
    s_answer_3: Any
    s_json: Any


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].round(4)
    return out


def _shown(frame: pd.DataFrame | None):
    return gr.update(value=_rounded(frame), visible=True) if frame is not None else gr.update(value=None, visible=False)


class EvaluationTab(Tab):
    """Reads the results directory on every request, so a fresh evaluation shows without a restart."""

    def layout(self) -> None:
        c = self.c
        with gr.Tab("Evaluation", id="evaluation") as c["tab"]:
            with gr.Row(equal_height=False):
                c["eval_status"] = gr.HTML(elem_id="icf-eval-status", scale=4)
                c["qa_dataset"] = gr.Dropdown(["All"], value="All", label="QA chart: dataset", scale=1, min_width=160)
                c["refresh_btn"] = gr.Button("Refresh", size="sm", scale=0, min_width=100)
            with gr.Row(equal_height=False):
                c["qa_plot"] = gr.Plot(label="QA metrics by method", elem_id="icf-qa-plot")
                c["bleu_plot"] = gr.Plot(label="reconstruction vs length", elem_id="icf-bleu-plot")
            c["qa_table"] = gr.Dataframe(label="Question answering summary", interactive=False, visible=False)
            c["rec_table"] = gr.Dataframe(label="Reconstruction by length", interactive=False, visible=False)
            c["pvo_table"] = gr.Dataframe(label="Paper vs ours", interactive=False, visible=False)
            c["extra_tables"] = gr.HTML()
            with gr.Column(visible=False) as c["sample_group"]:
                self._sample_layout()

    def _sample_layout(self) -> None:
        c = self.c
        gr.Markdown("#### Per-sample browser")
        with gr.Row():
            # Custom values: the API filters by any dataset or method without opening the tab first.
            c["s_dataset"] = gr.Dropdown(["All"], value="All", label="dataset", allow_custom_value=True)
            c["s_method"] = gr.Dropdown(["All"], value="All", label="score of method", allow_custom_value=True)
            c["s_metric"] = gr.Dropdown(QA_METRICS, value="rougeL_f", label="metric")
            c["s_min"] = gr.Slider(0, 1, value=0, step=0.05, label="min score")
            c["s_max"] = gr.Slider(0, 1, value=1, step=0.05, label="max score")
        c["s_note"] = gr.Markdown()
        c["s_table"] = gr.Dataframe(interactive=False, max_height=260, wrap=True)
        # Custom values: /sample takes any id, without a /samples call first; unknown ones show nothing.
        c["s_id"] = gr.Dropdown([], label="sample", allow_custom_value=True)
        with gr.Row():
            c["s_context"] = gr.Textbox(label="context", lines=6, max_lines=10, interactive=False, scale=3)
            with gr.Column(scale=2):
                c["s_question"] = gr.Textbox(label="question", interactive=False)
                c["s_reference"] = gr.Textbox(label="reference answer", interactive=False)
        # /sample's three answers stay its outputs; the table below shows every method and floor.
        for i, m in enumerate(ANSWER_METHODS, 1):
            c[f"s_answer_{i}"] = gr.Textbox(label=label(m), lines=4, interactive=False, visible=False)
        c["s_answers_html"] = gr.HTML(elem_id="icf-sample-answers-box")
        with gr.Accordion("Raw sample (JSON)", open=False):
            c["s_json"] = gr.JSON(label="sample")

    def wire(self) -> None:
        c, private = self.c, Runner.PRIVATE
        sample_inputs = [c[name] for name in ("s_dataset", "s_method", "s_metric", "s_min", "s_max")]
        samples = (self.samples, sample_inputs, SamplesView, c)
        # Public endpoints first: a private event would otherwise take the function's name.
        listen(functools.partial(gr.on, [s.input for s in sample_inputs]), *samples, api_name="samples")
        for trigger, name in ((c["tab"].select, "dashboard"), (c["refresh_btn"].click, "refresh_dashboard")):
            ev = listen(trigger, self.dashboard, c["qa_dataset"], DashboardView, c, api_name=name,
                        **({} if name == "dashboard" else private))
            listen(ev.then, *samples, api_name=f"{name}_samples", **private)
        c["qa_dataset"].input(self.qa_chart, c["qa_dataset"], c["qa_plot"], **private)
        listen(c["s_id"].change, self.sample, c["s_id"], SampleView, c, api_name="sample")
        c["s_id"].change(self.sample_answers, c["s_id"], c["s_answers_html"], **private)

        def pick_row(evt: gr.SelectData) -> Any:
            row = evt.row_value or []
            return row[0] if row else gr.skip()

        c["s_table"].select(pick_row, None, c["s_id"], **private)

    # ------------------------------------------------------------------ handlers

    @friendly_errors
    def dashboard(self, dataset: str | None = None) -> DashboardView:
        """Every committed table and chart; the dataset picker, the sample filters and browser to match."""
        res = load_results(self.shared.results_dir)
        if res.empty:
            empty, no_table, only_all = (charts.empty_figure("No evaluation results yet"),
                                         gr.update(value=None, visible=False), gr.update(choices=["All"], value="All"))
            return DashboardView(no_results_html(res.directory, res.problems), no_table, empty, empty, no_table,
                                 no_table, "", only_all, only_all, only_all, gr.update(visible=False))
        status = (meta_table_html(res.meta) if res.meta else banner("ok", "Committed evaluation results"))
        qa_datasets = sorted(res.qa_summary["dataset"].astype(str).unique()) if res.qa_summary is not None else []
        dataset = dataset if dataset in qa_datasets else "All"
        return DashboardView(
            status + problems_banner(res.problems), _shown(results.qa_table(res.qa_summary)),
            charts.qa_metrics_figure(res.qa_summary, dataset), charts.reconstruction_length_figure(res.reconstruction),
            _shown(res.reconstruction), _shown(results.paper_table(res.paper_vs_ours)), extra_tables_html(res),
            gr.update(choices=["All", *qa_datasets], value=dataset), gr.update(choices=["All", *res.datasets],
                                                                                 value="All"),
            gr.update(choices=["All", *res.sample_methods], value="All"), gr.update(visible=bool(res.samples)),
        )

    @friendly_errors
    def qa_chart(self, dataset: str | None) -> go.Figure:
        return charts.qa_metrics_figure(load_results(self.shared.results_dir).qa_summary, dataset)

    @friendly_errors
    def samples(self, dataset: str, method: str, metric: str, min_score: float, max_score: float) -> SamplesView:
        """The samples whose ``method`` scores between the two bounds on ``metric``."""
        res = load_results(self.shared.results_dir)
        if not res.samples:
            return SamplesView(pd.DataFrame(), gr.update(choices=[], value=None),
                               "No per-sample results (qa_samples.jsonl) yet.")
        lo, hi = float(min_score or 0.0), float(1.0 if max_score is None else max_score)
        if lo > hi:
            raise UserInputError(f"The minimum score ({lo}) is above the maximum ({hi}).")
        metric = metric if metric in QA_METRICS else "rougeL_f"
        found = filter_samples(res.samples, dataset, method, metric, lo, hi)
        table = results.sample_table(found[:MAX_ROWS], res.sample_methods, metric)
        ids = list(table["id"]) if not table.empty else []
        note = (f"{len(found)} of {len(res.samples)} samples match"
                + (f" (showing {MAX_ROWS})" if len(found) > MAX_ROWS else "") + ".")
        return SamplesView(table, gr.update(choices=ids, value=ids[0] if ids else None), note)

    @friendly_errors
    def sample(self, sample_id: str | None) -> SampleView:
        """One sample: its context, question, reference, and its first three methods' answers with scores."""
        match = find_sample(load_results(self.shared.results_dir), sample_id)
        if match is None:
            return SampleView("", "", "", *[gr.update(value="", label=label(m)) for m in ANSWER_METHODS], {})
        answers = match.get("answers", {})
        cols = (order_methods(answers)[:3] + ["", "", ""])[:3]
        boxes = []
        for m in cols:
            a = answers.get(m, {}) if m else {}
            scores = {k: float(a[k]) for k in QA_METRICS if isinstance(a.get(k), (int, float))}
            boxes.append(gr.update(value=str(a.get("text", "")), label=sample_answer_label(m, scores)))
        return SampleView(str(match.get("context", "")), str(match.get("question", "")),
                          str(match.get("reference", "")), *boxes, match)

    def sample_answers(self, sample_id: str | None) -> str:
        return sample_answers_html(find_sample(load_results(self.shared.results_dir), sample_id))

