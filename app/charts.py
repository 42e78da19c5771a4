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


def qa_metrics_figure(summary: pd.DataFrame | None, dataset: str | None = None) -> go.Figure:
    """Grouped bars: one group per metric, one bar per method."""
    if summary is None or summary.empty:
        return empty_figure("No QA summary yet")
    frame = summary
    if dataset and dataset != "All" and "dataset" in frame.columns:
        frame = frame[frame["dataset"].astype(str) == dataset]
    metrics = [m for m in METRIC_LABELS if m in frame.columns and m != "bleu"]
    fig = go.Figure()
    for i, (method, group) in enumerate(frame.groupby("method", sort=False)):
        values = [pd.to_numeric(group[m], errors="coerce").mean() for m in metrics]
        fig.add_trace(go.Bar(
            x=[METRIC_LABELS[m] for m in metrics], y=values, name=label(method), marker_color=color(method, i),
            text=[f"{v:.3f}" if pd.notna(v) else "" for v in values], textposition="outside",
        ))
    title = "Question answering" + (f" — {dataset}" if dataset and dataset != "All" else "")
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.08])
    return _layout(fig, title, "metric", "score (0–1)")


def bleu_length_figure(frame: pd.DataFrame | None) -> go.Figure:
    if frame is None or frame.empty:
        return empty_figure("No reconstruction results yet")
    fig = go.Figure()
    for i, (method, group) in enumerate(frame.groupby("method", sort=False)):
        fig.add_trace(go.Scatter(
            x=group["length_bucket"], y=group["bleu"], mode="lines+markers", name=label(method),
            line=dict(color=color(method, i), width=2.5),
        ))
    fig.update_yaxes(range=[0, 1.05])
    return _layout(fig, "Reconstruction BLEU-4 vs context length", "context length bucket (tokens, upper edge)",
                   "BLEU-4")


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
