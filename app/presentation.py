"""The HTML (and Markdown) the tabs show, and the number formatting it uses.

Nothing here touches a model or computes a comparison (`icformer.compare` does): every function
takes plain values or the library's results and returns strings or lists, so the tab modules
hold layout and flow only, and each piece is easy to test on its own.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import pandas as pd

from icformer import compare
from icformer.compare import FirstTokenComparison
from icformer.results import NONE_FLOOR, above_floor, order_methods
from icformer.results import SWAPPED as SWAPPED_FLOOR

from .about import PROFILE_CHOICE_HTML
from .results import Results, interval_text, qa_table, sample_score

if TYPE_CHECKING:
    from icformer import Answer
    from icformer.attention import AttentionReport

    from .service import ModelInfo

METHOD_LABELS = {"icformer": "IC-Former", "icae": "ICAE", "full": "Full context",
                 "icformer-no-pretrain": "IC-Former (no pre-training)"}
METHOD_COLORS = {"icformer": "#4f46e5", "icae": "#f59e0b", "full": "#10b981", "icformer-no-pretrain": "#a5b4fc"}
DIFF_COLORS = {"missing": "#fca5a5", "added": "#86efac"}


def label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


# ---------------------------------------------------------------------- numbers


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(num: float | None) -> str:
    if num is None:
        return "–"
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if abs(num) >= size:
            return f"{num / size:.2f} {unit}"
    return f"{num:.0f} B"


def fmt_flops(flops: float | None) -> str:
    if flops is None or flops <= 0:
        return "–"
    for unit, size in (("PFLOPs", 1e15), ("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6), ("kFLOPs", 1e3)):
        if flops >= size:
            return f"{flops / size:.3g} {unit}"
    return f"{flops:.0f} FLOPs"


def fmt_count(num: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if num >= size:
            return f"{num / size:.1f}{unit}"
    return f"{num:.0f}"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None or not math.isfinite(ratio) or ratio <= 0:
        return "–"
    return f"{ratio:.0f}×" if ratio >= 10 else f"{ratio:.1f}×"


def device_label(device: str | None) -> str:
    device = str(device or "?")
    return "GPU (" + device + ")" if device.startswith("cuda") else device.upper()


def memory_label(num_bytes: int | None, kind: str | None) -> str:
    """CUDA numbers are the peak allocation of the call; CPU numbers are the process RSS."""
    if num_bytes is None:
        return "–"
    what = "peak CUDA" if kind == "cuda_peak" else "process RSS" if kind == "cpu_rss" else (kind or "")
    return f"{fmt_bytes(num_bytes)} ({what})" if what else fmt_bytes(num_bytes)


# ---------------------------------------------------------------------- HTML pieces


def banner(kind: str, text: str) -> str:
    """kind: info | warn | error | ok (CSS classes in ui.CSS)."""
    return f'<div class="icf-banner icf-{kind}">{text}</div>'


def positions_label(num_tokens: int, num_vectors: int) -> str:
    """How many fewer positions the LLM reads, or, below one chunk's worth, how many more."""
    if not num_tokens or not num_vectors:
        return "–"
    if num_vectors < num_tokens:
        return f"{num_tokens / num_vectors:.1f}× fewer"
    if num_vectors == num_tokens:
        return "as many"
    return f"{num_vectors / num_tokens:.1f}× more: expanded"


def tokens_to_vectors(num_tokens: int, num_vectors: int, method: str, k: int | None = None) -> str:
    """The headline: tokens → vectors, and whether that is compression at all (k: vectors per chunk)."""
    if num_vectors >= num_tokens:
        per_chunk = f"every chunk becomes {k} vectors" if k else "every chunk becomes a fixed number of vectors"
        note = (f"{positions_label(num_tokens, num_vectors)}, not compressed: {per_chunk}, so a context of fewer "
                "tokens than that is expanded. Paste a longer one.")
    else:
        note = f"{positions_label(num_tokens, num_vectors)} positions for the LLM to read"
    return (
        f'<div class="icf-t2v"><span class="icf-big">{num_tokens:,}</span> tokens '
        f'<span class="icf-arrow">→</span> <span class="icf-big">{num_vectors:,}</span> {esc(label(method))} vectors '
        f'<span class="icf-muted">({esc(note)})</span></div>'
    )


def speedup_html(icformer_s: float | None, icae_s: float | None, speedup: float | None, device: str) -> str:
    """The headline number of the Compress tab (``speedup``: `icformer.compare.compression_speedups`)."""
    if icformer_s and icae_s and speedup:
        where = f"({fmt_seconds(icformer_s)} vs {fmt_seconds(icae_s)} on {esc(device_label(device))})"
        if speedup >= 1:
            text = f"IC-Former compressed this context <b>{fmt_ratio(speedup)} faster</b> than ICAE {where}"
        else:
            text = (f"ICAE was faster this time {where}: with a very small LLM or a very short context, "
                    "fixed overheads dominate. Try a longer context.")
        return (
            f'<div class="icf-speedup"><div class="icf-speedup-num">{fmt_ratio(speedup)}</div>'
            f'<div class="icf-speedup-txt">{text}</div></div>'
        )
    if icformer_s:
        return (
            f'<div class="icf-speedup"><div class="icf-speedup-num">{fmt_seconds(icformer_s)}</div>'
            f'<div class="icf-speedup-txt">IC-Former compression time on {esc(device_label(device))}. '
            "ICAE is not loaded, so there is no speed-up to show yet.</div></div>"
        )
    return ""


def timing_card(method: str, timings: dict, device: str, extra: str = "") -> str:
    """Compress / prefill / decode as a stacked bar plus numbers."""
    parts = [("compress", timings.get("compress_s", 0.0)), ("prefill", timings.get("prefill_s", 0.0)),
             ("decode", timings.get("decode_s", 0.0))]
    total = sum(v for _, v in parts) or 1e-12
    bar = "".join(
        f'<span class="icf-seg icf-seg-{name}" style="width:{max(100 * v / total, 0.5):.1f}%" '
        f'title="{name}: {fmt_seconds(v)}"></span>'
        for name, v in parts
    )
    rows = "".join(f"<tr><td>{name}</td><td>{fmt_seconds(v)}</td></tr>" for name, v in parts)
    tps = timings.get("tokens_per_s") or 0.0
    new_tokens = int(timings.get("new_tokens", 0) or 0)
    return (
        f'<div class="icf-card" style="border-top-color:{METHOD_COLORS.get(method, "#888")}">'
        f'<div class="icf-bar">{bar}</div>'
        f'<table class="icf-times">{rows}'
        f"<tr><td>total</td><td><b>{fmt_seconds(sum(v for _, v in parts))}</b></td></tr>"
        f"<tr><td>decode speed</td><td>{tps:.1f} tokens/s ({new_tokens} tokens)</td></tr>"
        f"<tr><td>device</td><td>{esc(device_label(device))}</td></tr></table>{extra}</div>"
    )


def answer_comparison(method: str, cmp: FirstTokenComparison | None) -> str:
    """One compressed method's answer against the full context's, at equal work (see
    `icformer.compare.FirstTokenComparison`: first token and decoding speed, never totals)."""
    if cmp is None:
        return ""
    if cmp.sooner >= 1.05:
        verdict = f"<b>{fmt_ratio(cmp.sooner)} sooner</b>"
    elif cmp.sooner > 1 / 1.05:
        verdict = "about as soon"
    else:
        verdict = f"{fmt_ratio(1 / cmp.sooner)} later"
    speeds = (cmp.tokens_per_s, cmp.full_tokens_per_s)
    decode = (f"; decoding {speeds[0]:.1f} vs {speeds[1]:.1f} tokens/s" if all(speeds) else "")
    return (
        f"<div class='icf-muted'>{esc(label(method))}: first token after {fmt_seconds(cmp.first_s)} (compress + "
        f"prefill) vs {fmt_seconds(cmp.full_first_s)} reading the full context, {verdict}{decode}. Answers of "
        "different lengths take different totals, so those are not compared.</div>"
    )


def run_name(meta: dict) -> str:
    """A committed benchmark run by machine, model and date (file names say neither)."""
    kind = "GPU" if str(meta.get("device", "")).startswith("cuda") else "CPU"
    llm = re.sub(r"^\S*/", "", str(meta.get("llm") or "")).replace(" architecture", "")
    parts = [f"{kind} {meta.get('device_name') or meta.get('device') or '?'}", llm, str(meta.get("date") or "")[:10]]
    return ", ".join(p for p in parts if p)


def decoding_note(done: int, limit: int, timings: dict, wall_s: float) -> str:
    """The Reconstruct tab while it streams: tokens so far, compute speed, and time spent waiting for turns."""
    compute = timings.get("prefill_s", 0.0) + timings.get("decode_s", 0.0)
    waited = max(wall_s - compute, 0.0)
    shared = f"; {fmt_seconds(waited)} of it waiting for other requests' turns" if waited >= 0.5 else ""
    return (f"<div class='icf-muted'><span class='icf-spinner'></span>Decoding: {done:,} of up to {limit:,} tokens, "
            f"{timings.get('tokens_per_s') or 0.0:.1f} tokens/s, {fmt_seconds(wall_s)} so far{shared}. "
            "Stop keeps what is decoded.</div>")


def reconstruction_stats(bleu: float, counts: dict[str, int], num_tokens: int, num_vectors: int, result,
                         limit: int, *, capped: bool, wall_s: float, no_repeat_ngram: int = 0) -> str:
    """BLEU and word counts of a finished (or stopped) reconstruction, what bounded it, and how it decoded."""
    compute = result.timings.get("prefill_s", 0.0) + result.timings.get("decode_s", 0.0)
    decoded = len(result.token_ids)
    waited = max(wall_s - compute, 0.0)
    html = (
        f'<div class="icf-stats"><div><span class="icf-big">{bleu:.3f}</span> BLEU-4</div>'
        f'<div><span class="icf-big">{counts["same"]:,}</span> words kept</div>'
        f'<div><span class="icf-big">{counts["missing"]:,}</span> missing</div>'
        f'<div><span class="icf-big">{counts["added"]:,}</span> added</div></div>'
        f"<div class='icf-muted'>{num_tokens:,} tokens → {num_vectors:,} vectors → {decoded:,} tokens decoded in "
        f"{fmt_seconds(compute)} ({result.timings.get('tokens_per_s') or 0.0:.1f} tokens/s) on "
        f"{esc(device_label(result.device))}"
        + (f"; {fmt_seconds(waited)} more waiting for other requests' turns" if waited >= 0.5 else "") + "."
    )
    if no_repeat_ngram:
        html += f" Greedy decoding with no repeated {no_repeat_ngram}-grams, not the paper's plain greedy."
    if not result.done:
        html += f" Stopped after {decoded:,} tokens, so the rest counts as missing."
    elif capped and decoded >= limit:
        html += f" Decoding was capped at {limit:,} new tokens, so the tail counts as missing."
    html += "</div>"
    if not result.trained:
        html += banner("warn", "Untrained compressor: expect noise; BLEU near 0 is the correct result here.")
    return html


def speed_table(live):
    """The live quick benchmark (a DataFrame of `icformer.bench` rows) as display strings.

    IC-Former's speed-up over ICAE is a property of the IC-Former row only: the other rows show "–"."""
    import pandas as pd

    def column(name, fmt, rows=None):
        values = live[name] if name in live else pd.Series([None] * len(live), index=live.index)
        keep = rows if rows is not None else pd.Series(True, index=live.index)
        return [fmt(v) if k and pd.notna(v) and v else "–" for v, k in zip(values, keep)]

    table = pd.DataFrame({
        "method": live["method"].map(label),
        "tokens": live["length"].astype(int).map(lambda n: f"{n:,}"),
        "compress": column("compress_s", fmt_seconds),
        "IC-Former speed-up vs ICAE": column("speedup_vs_icae", fmt_ratio, live["method"] == "icformer"),
        "LLM prefill": column("prefill_s", fmt_seconds),
        "decode": column("decode_tokens_per_s", lambda v: f"{v:.1f} tokens/s"),
        "FLOPs": column("flops_exact", fmt_flops),
    })
    if "memory_bytes" in live:
        kinds = live["memory_kind"] if "memory_kind" in live else [None] * len(live)
        table["memory"] = [memory_label(b, k) if pd.notna(b) else "–" for b, k in zip(live["memory_bytes"], kinds)]
    if "device" in live:
        table["device"] = live["device"].map(device_label)
    return table


def table_html(headers: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="icf-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def bench_runs_html(runs: list[tuple[dict, list[dict]]], paper: dict[tuple[int, int], dict[str, float]]) -> str:
    """Each committed benchmark run (its meta, `icformer.bench.summarise` rows) as a table, the paper's
    Table 1 (one RTX A6000, Llama-2-7B) beside the batch x length rows it reports."""
    if not runs:
        return ""
    parts = ["<h4>Committed runs, every batch x length</h4>"]
    for meta, rows in runs:
        where = ", ".join(str(meta.get(key, "?")) for key in ("device", "dtype", "llm")) + f"; file {meta.get('source', '?')}"
        table = []
        for r in sorted(rows, key=lambda r: (r["batch_size"], r["length"])):
            ref = paper.get((r["batch_size"], r["length"]), {})
            table.append((
                f"{r['batch_size']} x {r['length']}", fmt_seconds(r["icformer_s"]), fmt_seconds(r["icae_s"]),
                fmt_ratio(r["speedup"]) + (f" (paper {fmt_ratio(ref['speedup'])})" if "speedup" in ref else ""),
                fmt_ratio(r["flops_ratio"]),
                fmt_ratio(r["total_speedup"])
                + (f" (paper {fmt_ratio(ref['total_speedup'])})" if "total_speedup" in ref else ""),
                f"{r['time_over_flop_bound']:.2f}",
            ))
        parts.append(f"<div class='icf-muted'><b>{esc(run_name(meta))}</b> ({esc(where)})</div>")
        parts.append(table_html(("batch x tokens", "IC-Former", "ICAE", "IC-Former speed-up", "FLOPs ratio",
                                 "compress + prefill vs full prefill", "time / FLOP bound"), table))
    parts.append("<div class='icf-muted'>Times are medians of one run on the machine named; they move by about 10% "
                 "between runs. The paper's figures are for Llama-2-7B on one RTX A6000.</div>")
    return "".join(parts)


def profiles_table(rows: list[dict], loaded: str | None, requested: str | None) -> str:
    """`icformer.profiles.list_profiles()` as a table: each profile's setting, whether this
    machine has it, what it lacks, and which one this app loaded (or was asked for)."""
    from icformer.profiles import availability

    def state(row: dict) -> str:
        if row["name"] == loaded:
            return "loaded (in use)"
        if row["name"] == requested:
            return f"requested, not loaded: {availability(row)}"
        return availability(row)

    return table_html(
        ["Profile", "Setting", "LLM", "k per L tokens", "Status", "Missing"],
        [[row["name"], row["description"], row["llm"], f"{row['k']} per {row['L']}", state(row),
          "; ".join(row["missing"]) or "–"] for row in rows],
    )


# ---------------------------------------------------------------------- page chrome and status


def header_html(title: str) -> str:
    return (f"<div id='icf-header'><h1>{esc(title)}</h1><p>Compress a long context into a few digest vectors "
            "that a frozen LLM reads as a soft prompt — and compare with ICAE and the full context. "
            "<a href='https://arxiv.org/abs/2406.13618' target='_blank'>arXiv 2406.13618</a></p></div>")


def fallback_banner(info: ModelInfo) -> str:
    """Why the profile asked for at launch is not the one running, and how to choose."""
    reason = esc(info.profile_fallback).replace("\n", "<br>")
    return banner(
        "warn",
        f"<b>Profile {esc(info.requested_profile)} is not available here.</b><br>{reason}<br>"
        f"{PROFILE_CHOICE_HTML} The About tab lists every profile and what it is missing.",
    )


def status_html(state: str, loading_s: float, error: str | None, info: ModelInfo | None) -> str:
    """The banner above the tabs: loading, failed, or what runs (and what is missing or untrained)."""
    if state in ("idle", "loading"):
        return banner(
            "info",
            '<span class="icf-spinner"></span> Loading the model in the background'
            + (f" ({loading_s:.0f} s)" if loading_s >= 1 else "")
            + "… You can paste a context meanwhile; the first request waits for it.",
        )
    if state == "error" or info is None:
        return banner("error", f"<b>The model failed to load:</b> {esc(error)}")
    profile = f"profile <b>{esc(info.profile)}</b>, " if info.profile else ""
    html = (f"<b>Ready</b>: {profile}{esc(info.llm)} on <b>{esc(device_label(info.device))}</b> ({esc(info.dtype)}), "
            f"methods: {esc(', '.join(label(m) for m in info.methods))}.")
    if "icae" not in info.methods:
        html += " ICAE is not loaded (no checkpoint), so only IC-Former and the full context are compared."
    html = banner("ok", html)
    if info.profile_fallback:
        html += fallback_banner(info)
    if info.untrained:
        which = " and ".join(label(m) for m in info.untrained)
        html += banner(
            "warn",
            f"<b>Untrained compressor</b> ({esc(which)}: random weights or an unfinished training run): outputs are "
            "noise until finished checkpoints land in <code>assets/checkpoints/</code>. Timings, FLOPs and memory "
            "are real.",
        )
    return html


def model_markdown(info: ModelInfo | None, state: str, error: str | None) -> str:
    """The About tab's "What is loaded" table (Markdown)."""
    if info is None:
        return f"*Model state: {state}.*" + (f" Error: `{error}`" if error else "")
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
        state_md = "**trained checkpoint**" if c.get("trained") else "**untrained** (random initialisation)"
        if c.get("training"):
            state_md += f" ({c['training']}; model card `{c['card_path']}`)"
        lines.append(f"| {label(method)} | {state_md}; k={c.get('k')} vectors per chunk of L={c.get('L')} tokens; "
                     f"{params} |")
    if "icae" not in info.compressors:
        lines.append("| ICAE | not loaded (no checkpoint in `assets/checkpoints/icae/`) |")
    lines.append(f"| Load time | {info.load_seconds:.1f} s |")
    return "\n".join(lines)


def profiles_html(info: ModelInfo | None, profiles: list[dict]) -> str:
    """The About tab's profile table, with how a profile is chosen (at launch, for everyone)."""
    note = fallback_banner(info) if info and info.profile_fallback else ""
    table = profiles_table(profiles, loaded=info.profile if info else None,
                           requested=info.requested_profile if info else None)
    return f"<p class='icf-muted'>{PROFILE_CHOICE_HTML}</p>{note}{table}"


# ---------------------------------------------------------------------- Compress & Ask

COMPRESS_HINT_HTML = ("<div class='icf-muted'>Press <b>Compress</b> to see tokens → vectors, each method's "
                      "compression time, FLOPs and memory.</div>")
GENERATING_HTML = '<div class="icf-muted">generating…</div>'
ANSWER_SUBTITLES = {"icformer": "from the digest vectors", "icae": "from the memory slots",
                    "full": "reads every context token"}


def source_markdown(source: str) -> str:
    return f"*{esc(source)}*"


def reference_html(answer: str) -> str:
    """An example question's reference answer, under the question."""
    return f"<div class='icf-reference'><b>Reference answer:</b> {esc(answer)}</div>"


def compression_html(summary: dict[str, dict]) -> tuple[str, str]:
    """The Compress tab's headline and table from its JSON summary (method -> numbers, plus the
    ``speedup`` / ``flops_ratio`` of `icformer.compare.compression_speedups`)."""
    methods = [m for m, v in summary.items() if isinstance(v, dict)]
    first = summary[methods[0]]
    icf, icae = summary.get("icformer", {}), summary.get("icae", {})
    headline = tokens_to_vectors(first["num_tokens"], first["num_vectors"], methods[0], first.get("k"))
    headline += speedup_html(icf.get("compress_s"), icae.get("compress_s"), summary.get("speedup"),
                             first.get("device") or "")
    if "flops_ratio" in summary:
        headline += f'<div class="icf-muted">FLOPs: IC-Former needs {fmt_ratio(summary["flops_ratio"])} fewer.</div>'
    if not first["trained"]:
        headline += banner("warn", "Untrained compressor: the vectors are real but their content is noise.")
    rows = [[
        label(m),
        f"{s['num_tokens']:,} → {s['num_vectors']:,} ({positions_label(s['num_tokens'], s['num_vectors'])})",
        fmt_seconds(s["compress_s"]), fmt_flops(s.get("flops")),
        memory_label(s.get("memory_bytes"), s.get("memory_kind")), device_label(s.get("device")),
        "yes" if s["trained"] else "no (noise)",
    ] for m, s in ((m, summary[m]) for m in methods)]
    table = table_html(["method", "tokens → vectors", "compress time", "FLOPs", "memory", "device", "trained"], rows)
    return headline, table


def not_loaded_banner(method: str) -> str:
    return banner("info", f"{label(method)} is not loaded: add a checkpoint in assets/checkpoints/{method}/.")


def not_loaded_placeholder(method: str) -> str:
    return f"{label(method)} is not loaded (no checkpoint)."


def answer_note(ans: Answer, num_tokens: int | None = None, num_vectors: int | None = None) -> str:
    """Under an answer's timing card: positions the LLM read (vectors instead of tokens), and badges."""
    note = f"<div class='icf-muted'>LLM read {ans.prompt_positions} positions"
    if num_vectors is not None:
        note += f" ({num_vectors} vectors instead of {num_tokens} tokens)"
    note += "</div>"
    if not ans.done:
        note += "<div class='icf-badge-warn'>stopped before the end</div>"
    if not ans.trained:
        note += "<div class='icf-badge-warn'>untrained: noise</div>"
    return note


def ask_headline(comparisons: dict[str, FirstTokenComparison | None], stopped: bool, reference: str) -> str:
    """Above the answers: a Stop note, each compressor against the full context, the reference answer."""
    html = banner("info", "Stopped: the answers so far are shown.") if stopped else ""
    return html + "".join(answer_comparison(m, cmp) for m, cmp in comparisons.items()) + reference


# ---------------------------------------------------------------------- Reconstruct

RECONSTRUCT_INTRO_MD = (
    "Decode the compressed vectors of the **context from the Compress & Ask tab** back into text "
    "(the autoencoding task IC-Former is pre-trained on). "
    "<span style='background:#fca5a5;padding:0 4px;border-radius:3px'>missing</span> words are "
    "in the original but not reproduced; "
    "<span style='background:#86efac;padding:0 4px;border-radius:3px'>added</span> words are produced "
    "but not in the original."
)


def attention_html(report: AttentionReport) -> str:
    """`icformer.attention.context_attention`'s band numbers per layer, and what the paper shows."""
    rows = [(i, f"{s.order_correlation:.2f}", f"{s.in_order:.2f}",
             f"{s.window_mass:.3f} (uniform {s.uniform_window_mass:.3f})", f"{s.context_mass:.2f}")
            for i, s in enumerate(report.layers, 1)]
    html = table_html(("layer", "order correlation", "moves forward", "best 5-token window", "on context"), rows)
    html += (f"<div class='icf-muted'>The first {len(report.tokens)} tokens (one chunk). A pre-trained IC-Former "
             "in the paper shows a diagonal band in its last layer: each digest on 3-5 consecutive tokens, in "
             "order (order correlation near 1, most attention in one window).</div>")
    if not report.trained:
        html += banner("warn", "Untrained compressor: its attention is noise.")
    return html


# ---------------------------------------------------------------------- Speed and Evaluation


def committed_note(bench_dir: Path, committed: pd.DataFrame | None, metas: list[dict], problems: list[str]) -> str:
    """The Speed tab's note (Markdown) on the committed benchmark rows and the runs they come from."""
    if committed is None:
        note = f"No committed benchmark results in `{bench_dir}` yet (`python -m icformer bench --out {bench_dir}`)."
    else:
        where = "; ".join(
            f"{run_name(m)} ({m.get('dtype', '?')}" + (f", {m['threads']} threads" if m.get("threads") else "") + ")"
            for m in metas
        )
        if not where:
            where = ", ".join(sorted(committed["device"].astype(str).unique())) if "device" in committed else "?"
        note = f"Dashed: committed benchmark ({len(committed)} rows) measured on {where}."
    if problems:
        note += " Could not read: " + "; ".join(problems)
    return note


def live_bench_unavailable(why: str) -> str:
    return f"  \n**Live benchmark unavailable:** {why}"


def problems_banner(problems: list[str]) -> str:
    return banner("warn", "Could not read: " + esc("; ".join(problems))) if problems else ""


def no_results_html(directory: Path, problems: list[str]) -> str:
    return banner(
        "info",
        f"No evaluation results yet in <code>{esc(directory)}</code> — run "
        "<code>python -m icformer evaluate</code> to produce them.",
    ) + problems_banner(problems)


def sample_answer_label(method: str, scores: dict[str, float]) -> str:
    """A per-sample answer box's label: the method and its scores."""
    if not method:
        return "—"
    shown = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
    return label(method) + (f" — {shown}" if shown else "")


# ---------------------------------------------------------------------- diff


def diff_spans(ops: list[tuple[str, list[str]]]) -> list[tuple[str, str | None]]:
    """`icformer.compare.word_diff` runs as ``gr.HighlightedText`` spans: label None (same in both),
    "missing" (in the original, not reproduced) or "added" (produced, not in the original)."""
    return [(" ".join(words) + " ", None if op == "same" else op) for op, words in ops]


def word_diff(original: str, reconstructed: str) -> tuple[list[tuple[str, str | None]], dict[str, int]]:
    """The highlighted diff and its word counts per label, for two texts."""
    ops = compare.word_diff(original, reconstructed)
    return diff_spans(ops), compare.diff_counts(ops)


# ---------------------------------------------------------------------- committed evaluation results


_META_ROWS = (("llm", "LLM"), ("device", "device"), ("machine", "machine"), ("date", "date"), ("commit", "commit"),
              ("mode", "mode"), ("status", "status"), ("threads", "torch threads"))


def _no_path(value: Any) -> str:
    """A value as text, an absolute path reduced to its last part."""
    text = str(value)
    return Path(text).name if text.startswith(("/", "~")) or (len(text) > 2 and text[1:3] == ":\\") else text


def meta_table_html(meta: dict[str, Any]) -> str:
    """meta.json as a small two-column table (and whether each method was trained), without paths."""
    rows = [(name, _no_path(meta[key])) for key, name in _META_ROWS if meta.get(key) not in (None, "")]
    trained = meta.get("trained_by_method")
    if isinstance(trained, dict):
        rows.append(("trained", ", ".join(f"{label(m)}: {'yes' if ok else 'no'}" for m, ok in trained.items())))
    if meta.get("notes"):
        rows.append(("notes", str(meta["notes"])))
    return table_html(["run", ""], rows).replace("<table ", f'<table title="{esc("meta.json")}" ', 1)


def floor_note_html(res: Results) -> str:
    """A warning for the Compress & Ask tab while a committed compressor's QA score is not above its
    no-information floors (icformer.results.above_floor), with the measured numbers; "" otherwise."""
    qa = res.qa_summary
    if qa is None or "f1_over_none_lo" not in qa.columns:
        return ""
    overall = qa[qa["dataset"].astype(str) == "all"] if "dataset" in qa.columns else qa
    rows = {str(r["method"]): r for _, r in overall.iterrows()}
    near = []
    for method in ("icformer", "icae"):
        row = rows.get(method)
        if row is None:
            continue
        if above_floor(row.to_dict(), "none") is not True or above_floor(row.to_dict(), "swapped") is False:
            swapped = rows.get(method + SWAPPED_FLOOR)
            near.append(f"{esc(label(method))} F1 {interval_text(row, 'f1')} against "
                        f"{interval_text(swapped, 'f1') if swapped is not None else '–'} from another context's vectors")
    if not near:
        return ""
    none, full = rows.get(NONE_FLOOR), rows.get("full")
    n = int(full["n"]) if full is not None and pd.notna(full.get("n")) else None
    context = (f"; the full context F1 {interval_text(full, 'f1')} and the question alone {interval_text(none, 'f1')}"
               if full is not None and none is not None else "")
    return banner("warn", (
        "<b>The committed compressors barely read the context yet.</b> On "
        f"{n if n is not None else 'the'} held-out questions of the committed evaluation: " + "; ".join(near)
        + context + ". Where a compressor's answer below looks right, it may be a guess from the question; "
        "compare it with the full context's. (Brackets: 95% intervals; see the Evaluation tab.)"))


def sample_answers_html(sample: dict | None) -> str:
    """Every method's and floor's answer to one sample, with its scores and, for a compressor, its gain over
    its floors: where it read the context and where it guessed."""
    if not sample:
        return ""
    answers = sample.get("answers", {})
    methods = order_methods(answers)
    head = ["method", "answer", "F1", "EM", "ROUGE-L F", "F1 gain over floors", "answer CE (nats/token)"]
    body = []
    for m in methods:
        a = answers[m]
        floors = [sample_score(sample, f, "f1") for f in (NONE_FLOOR, m + SWAPPED_FLOOR)]
        floors = [f for f in floors if f is not None]
        own = sample_score(sample, m, "f1")
        gain = f"{own - max(floors):+.2f}" if m + SWAPPED_FLOOR in answers and own is not None and floors else ""
        kind = " (floor)" if a.get("kind") == "floor" or m == NONE_FLOOR or m.endswith(SWAPPED_FLOOR) else ""
        cells = [f"{label(m)}{kind}", str(a.get("text", ""))]
        cells += [f"{v:.2f}" if (v := sample_score(sample, m, k)) is not None else "–"
                  for k in ("f1", "exact_match", "rougeL_f")]
        ce = sample_score(sample, m, "answer_ce")
        cells += [gain, f"{ce:.2f}" if ce is not None else "–"]
        body.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    return (f"<div class='icf-reference'><b>Reference:</b> {esc(sample.get('reference', ''))}</div>"
            "<table class='icf-table' id='icf-sample-answers'><thead><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>" + "".join(body)
            + "</tbody></table>")


def extra_tables_html(res: Results) -> str:
    """The other tables, each scrolling sideways in its own box rather than running off the page."""
    shown = {"qa_by_task": qa_table}
    parts = []
    for name, frame in res.extra_tables.items():
        frame = shown.get(name, lambda f: f)(frame)
        html = frame.head(200).to_html(index=False, classes="icf-table", border=0, escape=True, na_rep="–",
                                       float_format=lambda v: f"{v:.4g}")
        parts.append(f"<h4>{esc(name)}</h4><div class='icf-scroll' style='overflow-x:auto;max-width:100%'>"
                     f"{html}</div>")
    return "".join(parts)
