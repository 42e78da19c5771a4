"""Plotly figures for the Speed and Evaluation tabs (plain data in, a figure out)."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from .presentation import METHOD_COLORS, label

_EXTRA_COLORS = ["#6366f1", "#ec4899", "#14b8a6", "#8b5cf6", "#ef4444", "#84cc16", "#0ea5e9"]
METRIC_LABELS = {
    "rouge1_f": "ROUGE-1 F", "rouge2_f": "ROUGE-2 F", "rougeL_f": "ROUGE-L F",
    "exact_match": "Exact match", "f1": "Token F1", "bleu": "BLEU-4",
}


def color(method: str, index: int = 0) -> str:
    return METHOD_COLORS.get(method) or _EXTRA_COLORS[index % len(_EXTRA_COLORS)]


def _layout(fig: go.Figure, title: str, x: str, y: str, *, log_x=False, log_y=False, height=380) -> go.Figure:
    # A legend of more than a few entries goes under the plot: above it, it would cover the title.
    entries = sum(1 for trace in fig.data if trace.showlegend is not False)
    below = entries > 3
    legend = (dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0.0) if below
              else dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    rows = math.ceil(entries / 2) if below else 0  # about two entries fit on a line of a half-width plot
    fig.update_layout(
        title=dict(text=title, x=0.02, font=dict(size=15)),
        template="plotly_white",
        height=height + 22 * rows,
        margin=dict(l=60, r=20, t=50, b=50 + 22 * rows + (30 if below else 0)),
        legend=legend,
        xaxis_title=x,
        yaxis_title=y,
    )
    if log_x:
        fig.update_xaxes(type="log")
        ticks = sorted({float(x) for trace in fig.data for x in (trace.x if trace.x is not None else [])})
        if 0 < len(ticks) <= 12:  # label the measured lengths, not plotly's 2-3-5 minor ticks
            fig.update_xaxes(tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    if log_y:
        fig.update_yaxes(type="log", dtick=1)  # decades only: no 2-5 minor labels
    return fig


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font=dict(size=14, color="#6b7280"), x=0.5, y=0.5,
                       xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, "", "", "", height=260)


# Committed runs: one line style and marker per run (file), so runs tell apart when methods share a colour.
_RUN_STYLES = [("dash", "circle"), ("dashdot", "square"), ("longdash", "diamond"), ("dot", "triangle-up")]


def speed_figure(live: pd.DataFrame | None, committed: pd.DataFrame | None, *, log: bool = True) -> go.Figure:
    """Compression time vs context length: live quick run (solid) and committed runs (a style per run)."""
    fig = go.Figure()
    for frame, suffix in ((live, "live"), (committed, "committed")):
        if frame is None or frame.empty:
            continue
        if "batch_size" in frame.columns:  # one curve per method: batch 1 when present
            sizes = pd.to_numeric(frame["batch_size"], errors="coerce")
            frame = frame[sizes == sizes.min()] if sizes.notna().any() else frame
        several = "source" in frame.columns and frame["source"].nunique() > 1
        keys = ["source", "method"] if several else ["method"]
        runs = list(dict.fromkeys(frame["source"])) if several else [None]
        for i, (key, group) in enumerate(frame.groupby(keys, sort=False)):
            key = key if isinstance(key, tuple) else (key,)
            method, run = key[-1], (key[0] if several else None)
            dash, symbol = ("solid", "circle") if suffix == "live" else _RUN_STYLES[runs.index(run) % len(_RUN_STYLES)]
            if str(run or "").startswith("GPU"):  # run names start with the device kind: GPU runs hollow
                symbol += "-open"
            # "full" compresses nothing: show what it costs instead, the LLM's prefill of the whole context.
            column, name = ("prefill_s", "Full context: LLM prefill") if method == "full" else ("compress_s", label(method))
            if several:
                name += f", {run}"
            if column not in group.columns:
                continue
            group = group.assign(y=pd.to_numeric(group[column], errors="coerce")).dropna(subset=["y"])
            group = group[group["y"] > 0].groupby("length", as_index=False)["y"].mean().sort_values("length")
            if group.empty:
                continue
            fig.add_trace(go.Scatter(
                x=group["length"], y=group["y"], mode="lines+markers",
                name=f"{name} ({suffix})", marker=dict(symbol=symbol, size=7),
                line=dict(color=color(method, i), dash=dash, width=2.5 if method != "full" else 1.5),
                opacity=1.0 if suffix == "live" else 0.75,
                hovertemplate="%{x} tokens: %{y:.4f} s<extra>" + name + "</extra>",
            ))
    if not fig.data:
        return empty_figure("Run the benchmark to see compression time against context length")
    return _layout(fig, "Compression time vs context length (batch 1)", "context length (tokens)", "seconds",
                   log_x=log, log_y=log)


def flops_figure(frame: pd.DataFrame | None, *, log: bool = True) -> go.Figure:
    """Analytic compression FLOPs vs length; ``frame`` has method, length, flops."""
    if frame is None or frame.empty or "flops" not in frame.columns:
        return empty_figure("FLOPs are not available (icformer.flops is not installed yet)")
    fig = go.Figure()
    for i, (method, group) in enumerate(frame.groupby("method", sort=False)):
        group = group.sort_values("length")
        fig.add_trace(go.Scatter(
            x=group["length"], y=group["flops"], mode="lines+markers", name=label(method),
            line=dict(color=color(method, i), width=2.5),
            hovertemplate="%{x} tokens: %{y:.3s}FLOPs<extra>" + label(method) + "</extra>",
        ))
    fig.update_yaxes(exponentformat="SI")
    return _layout(fig, "Compression FLOPs vs context length (matmuls, analytic)", "context length (tokens)",
                   "FLOPs", log_x=log, log_y=log)


def _bounds(frame: pd.DataFrame, name: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(value, minus, plus) of column `name`, the interval from `name_lo` / `name_hi` when present."""
    value = pd.to_numeric(frame[name], errors="coerce") if name in frame.columns else pd.Series(float("nan"),
                                                                                                 index=frame.index)
    low = pd.to_numeric(frame[f"{name}_lo"], errors="coerce") if f"{name}_lo" in frame.columns else value
    high = pd.to_numeric(frame[f"{name}_hi"], errors="coerce") if f"{name}_hi" in frame.columns else value
    return value, (value - low.fillna(value)).clip(lower=0), (high.fillna(value) - value).clip(lower=0)


def _axis_top(values: list[float], minimum: float = 0.05) -> float:
    """An axis end a little above the largest value (with its interval), at least `minimum`, at most 1."""
    top = max([v for v in values if pd.notna(v)] or [0.0])
    return min(1.0, max(minimum, top * 1.25))


QA_CHART_METRICS = ("f1", "exact_match", "rougeL_f")


def qa_metrics_figure(summary: pd.DataFrame | None, dataset: str | None = None) -> go.Figure:
    """One panel per metric, one horizontal bar per method or floor, with its 95% interval as an error bar
    and its value written past the bar's interval (labels never share a line). The score axis is scaled to
    the data, the same in every panel."""
    from plotly.subplots import make_subplots

    if summary is None or summary.empty:
        return empty_figure("No QA summary yet")
    frame = summary
    if "dataset" in frame.columns:
        wanted = dataset if dataset and dataset != "All" else "all"
        chosen = frame[frame["dataset"].astype(str) == wanted]
        frame = chosen if not chosen.empty or wanted != "all" else frame
    metrics = [m for m in QA_CHART_METRICS if m in frame.columns] or [
        m for m in METRIC_LABELS if m in frame.columns and m != "bleu"]
    if frame["method"].duplicated().any():  # no "all" rows: average the datasets
        frame = frame.groupby("method", sort=False, as_index=False).mean(numeric_only=True)
    methods = list(frame["method"].astype(str))
    floors = {m for m, k in zip(methods, frame.get("kind", pd.Series([""] * len(frame))).astype(str))
              if k == "floor"}
    fig = make_subplots(rows=1, cols=len(metrics), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[METRIC_LABELS[m] for m in metrics])
    ends = []
    for col, metric in enumerate(metrics, 1):
        value, minus, plus = _bounds(frame, metric)
        ends += list(value + plus)
        colors = [color(m, i) for i, m in enumerate(methods)]
        fig.add_trace(go.Bar(
            y=[label(m) for m in methods], x=value, orientation="h", marker_color=colors,
            marker_pattern_shape=["/" if m in floors else "" for m in methods], showlegend=False,
            error_x=dict(type="data", array=plus, arrayminus=minus, visible=True, thickness=1.2, width=3),
            hovertemplate="%{y}: %{x:.3f}<extra>" + METRIC_LABELS[metric] + "</extra>",
        ), row=1, col=col)
        fig.add_trace(go.Scatter(  # the value, just past the interval's end: one label per bar, on its own row
            y=[label(m) for m in methods], x=value + plus, mode="text", showlegend=False, hoverinfo="skip",
            text=[f" {v:.3f}" if pd.notna(v) else "" for v in value], textposition="middle right",
            textfont=dict(size=11), cliponaxis=False,
        ), row=1, col=col)
    top = _axis_top(ends) * 1.3  # room for the labels
    fig.update_xaxes(range=[0, top], tickformat=".2~f", nticks=4)
    fig.update_yaxes(autorange="reversed")
    title = "Question answering" + (f" — {dataset}" if dataset and dataset != "All" else "")
    title += " (hatched: no-information floors; bars: 95% intervals)" if floors else ""
    return _layout(fig, title, "", "", height=140 + 30 * len(methods))


def reconstruction_length_figure(frame: pd.DataFrame | None) -> go.Figure:
    """Reconstruction per length bucket with 95% intervals: BLEU-4 (its axis scaled to the data; dashed,
    where the results have it, the same vectors decoded with no repeated n-grams) and, where the results
    have it, the swap gap beside it (nats/token the vectors carry of their own window; zero marked),
    which still separates methods whose reconstructions BLEU scores near 0."""
    from plotly.subplots import make_subplots

    if frame is None or frame.empty:
        return empty_figure("No reconstruction results yet")
    panels = [("bleu", "BLEU-4")]
    if "ce_gap" in frame.columns and pd.to_numeric(frame["ce_gap"], errors="coerce").notna().any():
        panels.append(("ce_gap", "swap gap (nats/token)"))
    fig = make_subplots(rows=1, cols=len(panels), horizontal_spacing=0.12, subplot_titles=[t for _, t in panels])
    blocked = "bleu_no_repeat" in frame.columns and pd.to_numeric(frame["bleu_no_repeat"],
                                                                  errors="coerce").notna().any()
    lines = [(1, "bleu", ""), *([(1, "bleu_no_repeat", ", no repeated n-grams")] if blocked else []),
             *[(col, metric, "") for col, (metric, _) in enumerate(panels[1:], 2)]]
    ends = []
    for col, metric, suffix in lines:
        for i, (method, group) in enumerate(frame.groupby("method", sort=False)):
            value, minus, plus = _bounds(group, metric)
            if col == 1:
                ends += list(value + plus)
            fig.add_trace(go.Scatter(
                x=group["length_bucket"], y=value, mode="lines+markers", name=label(method) + suffix,
                showlegend=col == 1, legendgroup=method + suffix,
                line=dict(color=color(method, i), width=2.5, dash="dash" if suffix else "solid"),
                error_y=dict(type="data", array=plus, arrayminus=minus, visible=True, thickness=1.2, width=4),
                hovertemplate="≤ %{x} tokens: %{y:.3f}<extra>" + label(method) + suffix + "</extra>",
            ), row=1, col=col)
    fig.update_yaxes(range=[0, _axis_top(ends, minimum=0.02)], tickformat=".3~f", row=1, col=1)
    if len(panels) > 1:
        fig.add_hline(y=0, line=dict(color="#9ca3af", width=1, dash="dot"), row=1, col=2)
        fig.update_yaxes(tickformat=".2~f", row=1, col=2)
    return _layout(fig, "Reconstruction vs context length (95% intervals)",
                   "context length bucket (tokens, upper edge)", "")


def attention_figure(tokens: list[str], weights: list[list[float]], layer: int) -> go.Figure:
    """Heatmap of one layer's digest attention ([k, n + k]) over the context tokens only."""
    context = [row[: len(tokens)] for row in weights]
    # Positions keep repeated tokens apart on the axis; hover shows the token itself.
    ticks = [f"{i}:{t.strip() or '␣'}" for i, t in enumerate(tokens)]
    fig = go.Figure(go.Heatmap(z=context, x=ticks, y=list(range(1, len(context) + 1)), colorscale="Blues",
                               colorbar=dict(title="attention"),
                               hovertemplate="digest %{y} → %{x}<br>attention %{z:.3f}<extra></extra>"))
    fig = _layout(fig, f"Layer {layer}: each digest's attention over the context", "context token",
                  "digest", height=420)
    fig.update_yaxes(autorange="reversed", tickmode="linear", tick0=1, dtick=max(1, len(context) // 16))
    fig.update_xaxes(tickangle=-60, nticks=32)
    return fig
