"""Pure presentation helpers: number formatting, HTML snippets, and the word-level diff.

Nothing here touches a model; every function takes plain values and returns strings or lists,
so each is easy to test on its own.
"""

from __future__ import annotations

import difflib
import html
import math
import re
from typing import Iterable

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


def speedup_html(icformer_s: float | None, icae_s: float | None, device: str) -> str:
    """The headline number of the Compress tab."""
    if icformer_s and icae_s:
        ratio = icae_s / icformer_s
        where = f"({fmt_seconds(icformer_s)} vs {fmt_seconds(icae_s)} on {esc(device_label(device))})"
        if ratio >= 1:
            text = f"IC-Former compressed this context <b>{fmt_ratio(ratio)} faster</b> than ICAE {where}"
        else:
            text = (f"ICAE was faster this time {where}: with a very small LLM or a very short context, "
                    "fixed overheads dominate. Try a longer context.")
        return (
            f'<div class="icf-speedup"><div class="icf-speedup-num">{fmt_ratio(ratio)}</div>'
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


def answer_comparison(method: str, timings: dict, full: dict) -> str:
    """One compressed method's answer against the full context's, at equal work.

    Answers differ in length, so their totals are not compared: the time to the first token
    (compression + prefill) and the decoding speed per token are.
    """
    first, full_first = (t.get("compress_s", 0.0) + t.get("prefill_s", 0.0) for t in (timings, full))
    if not first or not full_first:
        return ""
    ratio = full_first / first
    if ratio >= 1.05:
        verdict = f"<b>{fmt_ratio(ratio)} sooner</b>"
    elif ratio > 1 / 1.05:
        verdict = "about as soon"
    else:
        verdict = f"{fmt_ratio(1 / ratio)} later"
    speeds = [t.get("tokens_per_s") or 0.0 for t in (timings, full)]
    decode = (f"; decoding {speeds[0]:.1f} vs {speeds[1]:.1f} tokens/s" if all(speeds) else "")
    return (
        f"<div class='icf-muted'>{esc(label(method))}: first token after {fmt_seconds(first)} (compress + prefill) "
        f"vs {fmt_seconds(full_first)} reading the full context, {verdict}{decode}. Answers of different lengths "
        "take different totals, so those are not compared.</div>"
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
                         limit: int, *, capped: bool, wall_s: float) -> str:
    """BLEU and word counts of a finished (or stopped) reconstruction, and what bounded it."""
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


# ---------------------------------------------------------------------- diff

_WORD = re.compile(r"\S+")


def word_diff(original: str, reconstructed: str) -> tuple[list[tuple[str, str | None]], dict[str, int]]:
    """Word-level diff for ``gr.HighlightedText``.

    Returns ``[(text, label)]`` where label is None (same in both), "missing" (in the original,
    not reproduced) or "added" (produced, not in the original), plus counts of words per label.
    """
    a, b = _WORD.findall(original), _WORD.findall(reconstructed)
    spans: list[tuple[str, str | None]] = []
    counts = {"same": 0, "missing": 0, "added": 0}

    def push(words: list[str], tag: str | None) -> None:
        if not words:
            return
        counts["same" if tag is None else tag] += len(words)
        spans.append((" ".join(words) + " ", tag))

    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            push(a[i1:i2], None)
        else:
            push(a[i1:i2], "missing")
            push(b[j1:j2], "added")
    return spans, counts
