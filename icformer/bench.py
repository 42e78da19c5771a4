"""`python -m icformer bench`: compression speed of IC-Former vs ICAE, as in the paper's Table 1.

For each batch size and context length, one process times, interleaved and after a warm-up:
IC-Former compression, ICAE compression, the LLM's prefill of the answer prompt holding the
compressed vectors, and the prefill of the same prompt holding the full context. The warm-up
run of each step is the FlopCounterMode run, so measured FLOPs cost no extra pass; on a GPU each
run is timed with CUDA events after a synchronisation. Contexts are random token ids (no special
tokens): speed does not depend on content.

At batch 1 it also decodes a fixed number of tokens after each prompt (greedy, no stop token),
for the decode speed a reader gets from each method: the compressed prompt holds k vectors per
chunk, the full one every context token, so the full context's KV cache grows with the length.

IC-Former's time is also compared with its FLOP-bound time: its exact FLOPs over the rate
of its own largest matmul (the K/V projection), timed in the same rotation; the ratio says
how close to the hardware's matmul speed the whole compression runs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from .architecture import ARCHITECTURES, random_llm
from .compressor import ContextCompressor, build_compressor, encode
from .defaults import EMBEDDED_K, EMBEDDED_L, SOURCE_COMMIT_ENV
from .flops import Flops, chunk_grid, icae_flops, icformer_flops, measure_flops
from .generation import SamplingOptions, generate_from_embeds
from .compressors import new_model
from .prompts import assemble, prompt_style, question_layout
from .results import BENCH_COLUMNS, BENCH_STEM, MEASUREMENTS, write_table
from .timing import cpu_name, elapsed, peak_memory_bytes, reset_peak_memory, source_commit

DEFAULT_LENGTHS = (128, 256, 512, 1024, 2048, 4096)
DEFAULT_BATCH_SIZES = (1, 8)
DEFAULT_REPEATS = 5
QUICK_LENGTHS = (128, 512)
QUICK_REPEATS = 3
DECODE_TOKENS = 32  # new tokens decoded per method at batch 1 (quick: QUICK_DECODE_TOKENS)
QUICK_DECODE_TOKENS = 16
QUESTION = "What is the main point of this text?"
FILE_STEM = BENCH_STEM

COLUMNS = BENCH_COLUMNS  # the schema: icformer/results.py


# --------------------------------------------------------------------------- measurements


def synthetic_contexts(cc: ContextCompressor, batch: int, length: int, generator: torch.Generator) -> list[list[int]]:
    """`batch` contexts of `length` random token ids, special tokens excluded."""
    vocab = min(len(cc.tokenizer), cc.llm.get_input_embeddings().num_embeddings)
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[[i for i in cc.tokenizer.all_special_ids if i < vocab]] = False
    pool = allowed.nonzero().squeeze(1)
    return pool[torch.randint(len(pool), (batch, length), generator=generator)].tolist()


def _prefill_inputs(cc: ContextCompressor, vectors: list[torch.Tensor], task: str | None) -> torch.Tensor:
    """The answer prompt around each context's vectors, stacked: [batch, positions, hidden]."""
    model = cc.icformer if task else None
    layout = question_layout(cc.tokenizer, QUESTION, task=task, style=prompt_style(model))
    vector = model.task_embedding(task) if model else None
    return torch.stack([assemble(cc.target.embed, layout, v.to(cc.target.dtype), vector) for v in vectors])


def _prefill(cc: ContextCompressor, inputs: torch.Tensor) -> Any:
    """What `generate` does before the first token: fill the KV cache, logits for the last position."""
    with cc._decoder():
        return cc.llm(inputs_embeds=inputs, use_cache=True, logits_to_keep=1)


def _reference_matmul(cc: ContextCompressor, batch: int, length: int) -> Callable[[], torch.Tensor]:
    """IC-Former's largest matmul for this batch: the K/V projection of every chunk's [context; digests]."""
    config = cc.icformer.config
    chunks, width = chunk_grid(length, config.chunk_size)
    rows = batch * chunks * (width + config.num_digest_tokens)
    a = torch.randn(rows, config.hidden_size, device=cc.device, dtype=cc.target.dtype)
    b = torch.randn(config.hidden_size, config.hidden_size, device=cc.device, dtype=cc.target.dtype)
    return lambda: a @ b


def _decode_rate(cc: ContextCompressor, inputs: torch.Tensor, tokens: int) -> float:
    """Tokens per second decoding `tokens` new tokens after the prompt `inputs` ([positions, hidden]):
    greedy and with no stop token, so every method decodes the same number; the prefill is not counted."""
    options = SamplingOptions(max_new_tokens=tokens)
    return generate_from_embeds(cc.llm, cc.tokenizer, inputs, options, [], cc._decoder)[1]["tokens_per_s"]


@torch.no_grad()
def _measure(cc: ContextCompressor, ids: list[list[int]], repeats: int,
             decode_tokens: int = 0) -> dict[str, dict[str, Any]]:
    """Seconds (median), measured FLOPs and peak memory of each step, interleaved.

    The reference matmul is timed in the same rotation, so the FLOP-bound time it gives
    sees the same contention as the steps it is compared with.
    """
    compressed = _prefill_inputs(cc, encode(cc.icformer, cc.target, ids), "FT")
    full = _prefill_inputs(cc, encode(None, cc.target, ids), None)
    steps: dict[str, Callable[[], Any]] = {
        "icformer": lambda: encode(cc.icformer, cc.target, ids),
        "icae": lambda: encode(cc.icae, cc.target, ids),
        "prefill_compressed": lambda: _prefill(cc, compressed),
        "prefill_full": lambda: _prefill(cc, full),
        "matmul": _reference_matmul(cc, len(ids), len(ids[0])),
    }
    results = {name: {"flops": measure_flops(step)[0], "times": [], "memory": 0} for name, step in steps.items()}
    names = list(steps)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order: no step always first
            reset_peak_memory(cc.device)
            results[name]["times"].append(elapsed(cc.device, steps[name]))
            results[name]["memory"] = max(results[name]["memory"], peak_memory_bytes(cc.device))
    for result in results.values():
        result["seconds"] = statistics.median(result.pop("times"))
    if decode_tokens and len(ids) == 1:
        for name, inputs in (("decode_compressed", compressed), ("decode_full", full)):
            results[name] = {"tokens_per_s": _decode_rate(cc, inputs[0], decode_tokens)}
    return results


# --------------------------------------------------------------------------- rows


def _rows(cc: ContextCompressor, batch: int, length: int, repeats: int, measured: dict) -> list[dict]:
    analytic: dict[str, Flops] = {
        "icformer": icformer_flops(cc.icformer.config, length, batch),
        "icae": icae_flops(cc.icae, length, batch),
    }
    k, L = cc.icformer.config.num_digest_tokens, cc.icformer.config.chunk_size
    chunks = chunk_grid(length, L)[0]
    full_total = measured["prefill_full"]["seconds"]
    icae_s = measured["icae"]["seconds"]
    rate = measured["matmul"]["flops"] / measured["matmul"]["seconds"]
    decode = {key: measured[f"decode_{key}"]["tokens_per_s"] if f"decode_{key}" in measured else None
              for key in ("compressed", "full")}
    common = dict(batch_size=batch, length=length, repeats=repeats, device=str(cc.device),
                  memory_kind="cuda_peak" if cc.device.type == "cuda" else "cpu_rss")
    rows = []
    for method in ("icformer", "icae"):
        seconds, prefill = measured[method]["seconds"], measured["prefill_compressed"]["seconds"]
        flops = analytic[method]
        bound = flops.exact / rate
        rows.append(dict(
            common, method=method, k=k, L=L, num_chunks=chunks, num_vectors=chunks * k,
            compress_s=seconds, prefill_s=prefill, total_s=seconds + prefill,
            speedup_vs_icae=icae_s / seconds, total_speedup_vs_full=full_total / (seconds + prefill),
            flops_paper=flops.paper, flops_exact=flops.exact, flops_measured=measured[method]["flops"],
            flops_ratio_vs_icae=analytic["icae"].exact / flops.exact,
            prefill_flops_measured=measured["prefill_compressed"]["flops"],
            gflops_per_s=measured[method]["flops"] / seconds / 1e9, matmul_gflops_per_s=rate / 1e9,
            flop_bound_s=bound, time_over_flop_bound=seconds / bound, memory_bytes=measured[method]["memory"],
            decode_tokens_per_s=decode["compressed"],
        ))
    rows.append(dict(
        common, method="full", num_vectors=length, prefill_s=full_total, total_s=full_total,
        total_speedup_vs_full=1.0, prefill_flops_measured=measured["prefill_full"]["flops"],
        matmul_gflops_per_s=rate / 1e9, memory_bytes=measured["prefill_full"]["memory"],
        decode_tokens_per_s=decode["full"],
    ))
    return [{column: row.get(column) for column in COLUMNS} for row in rows]


def run_benchmark(
    cc: ContextCompressor,
    lengths: list[int] | None = None,
    batch_sizes: list[int] | None = None,
    repeats: int | None = None,
    *,
    quick: bool = False,
    max_batch_tokens: int | None = None,
    decode_tokens: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Benchmark `cc`'s IC-Former and ICAE; returns plain rows, one per (batch_size, length, method).

    Defaults: lengths 128..4096, batch sizes 1 and 8, 5 repeats; `quick`: lengths 128 and 512,
    batch 1, 3 repeats. `max_batch_tokens` skips combinations with batch_size * length above it.
    `decode_tokens` (default 32, quick 16, 0: none) are decoded per method at batch 1.

    Row schema (`COLUMNS`; None where a column does not apply, e.g. compression columns for "full"):
      method: "icformer", "icae" or "full" (the LLM reading the whole context; no compression)
      batch_size, length: contexts per call and tokens per context
      k, L, num_chunks, num_vectors: digests per chunk, chunk limit, chunks and vectors per context
      repeats: timed runs per step (after one warm-up run, which is the FLOP-counting run)
      compress_s: median seconds to compress the whole batch
      prefill_s: median seconds for the LLM to prefill the batch's answer prompts holding the
        vectors (both compressed methods share one measurement: same shapes) or the full context
      total_s: compress_s + prefill_s
      speedup_vs_icae: ICAE compress_s / this method's compress_s
      total_speedup_vs_full: full-context prefill_s / this method's total_s (> 1: faster)
      flops_paper, flops_exact, flops_measured: compression FLOPs (see flops.py)
      flops_ratio_vs_icae: ICAE exact FLOPs / this method's exact FLOPs
      prefill_flops_measured: FlopCounterMode count of the prefill
      gflops_per_s: measured compression FLOPs / compress_s, in GFLOP/s
      matmul_gflops_per_s: this device's rate (model dtype) for IC-Former's K/V projection of
        this batch ([batch*chunks*(chunk+k), h] @ [h, h]), timed in the same rotation
      flop_bound_s, time_over_flop_bound: exact FLOPs / matmul rate, and compress_s over it
      memory_bytes, memory_kind: CUDA peak allocation ("cuda_peak") or process RSS ("cpu_rss")
      device: where it ran
      decode_tokens_per_s: at batch 1, tokens per second decoding `decode_tokens` tokens after the
        answer prompt (the compressed methods share one measurement: same shapes); None otherwise
    """
    if cc.icae is None:
        raise ValueError("the benchmark compares IC-Former with ICAE; build the compressor with an ICAE (icae=True)")
    shapes = {m.method: (m.config.num_digest_tokens, m.config.chunk_size) for m in (cc.icformer, cc.icae)}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"IC-Former and ICAE must compress at the same k and L to be compared, got (k, L) {shapes}")
    lengths = list(lengths or (QUICK_LENGTHS if quick else DEFAULT_LENGTHS))
    batch_sizes = list(batch_sizes or ((1,) if quick else DEFAULT_BATCH_SIZES))
    repeats = repeats or (QUICK_REPEATS if quick else DEFAULT_REPEATS)
    if decode_tokens is None:
        decode_tokens = QUICK_DECODE_TOKENS if quick else DECODE_TOKENS
    if repeats < 1 or min(lengths) < 1 or min(batch_sizes) < 1 or decode_tokens < 0:
        raise ValueError("lengths, batch sizes and repeats must be positive, decode tokens not negative")
    generator = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    for batch in batch_sizes:
        for length in lengths:
            if max_batch_tokens is not None and batch * length > max_batch_tokens:
                continue
            if progress is not None:
                progress(f"batch {batch} x {length} tokens")
            ids = synthetic_contexts(cc, batch, length, generator)
            rows.extend(_rows(cc, batch, length, repeats, _measure(cc, ids, repeats, decode_tokens)))
    return rows


# --------------------------------------------------------------------------- reporting


def environment(cc: ContextCompressor) -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    import transformers

    commit, dirty = source_commit()
    # A copy of the tree whose .git is not its own (a lent GPU machine's) is told its commit instead.
    if os.environ.get(SOURCE_COMMIT_ENV):
        commit, dirty = os.environ[SOURCE_COMMIT_ENV], None
    device = cc.device
    return dict(
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        dtype=cc.target.dtype_name,
        torch=torch.__version__,
        transformers=transformers.__version__,
        threads=torch.get_num_threads(),
        git_commit=commit,
        git_dirty=dirty,
        llm=cc.target.name,
        llm_hash=cc.target.fingerprint,
        icformer_trained=cc.icformer.trained,
        icae_trained=cc.icae.trained,
        icformer_layers=cc.icformer.config.num_layers,
        icae_lora_r=cc.icae.config.lora_r,
    )


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One plain dict per (batch, length): the IC-Former, ICAE and full-context rows side by side."""
    by_key: dict[tuple[int, int], dict[str, dict]] = {}
    for row in rows:
        by_key.setdefault((int(row["batch_size"]), int(row["length"])), {})[row["method"]] = row
    out = []
    for (batch, length), m in by_key.items():
        if not {"icformer", "icae", "full"} <= m.keys():
            continue
        icf, icae, full = m["icformer"], m["icae"], m["full"]
        out.append(dict(
            batch_size=batch, length=length, icformer_s=icf["compress_s"], icae_s=icae["compress_s"],
            speedup=icf["speedup_vs_icae"], flops_ratio=icf["flops_ratio_vs_icae"], prefill_s=icf["prefill_s"],
            full_s=full["prefill_s"], icformer_total_s=icf["total_s"], total_speedup=icf["total_speedup_vs_full"],
            icformer_flops=icf["flops_exact"], icae_flops=icae["flops_exact"],
            measured_over_exact=icf["flops_measured"] / icf["flops_exact"], gflops_per_s=icf["gflops_per_s"],
            time_over_flop_bound=icf["time_over_flop_bound"],
            icformer_memory=icf["memory_bytes"], icae_memory=icae["memory_bytes"], memory_kind=icf["memory_kind"],
            decode_tokens_per_s=icf.get("decode_tokens_per_s"),
            full_decode_tokens_per_s=full.get("decode_tokens_per_s"),
        ))
    return out


def read_runs(directory: str | Path) -> list[tuple[Path, dict[str, Any], list[dict[str, Any]]]]:
    """Every benchmark JSON in `directory` as `write_results` writes it: (path, meta, `summarise`d rows).
    Files of another shape are skipped: they are not this benchmark's."""
    runs: list[tuple[Path, dict[str, Any], list[dict[str, Any]]]] = []
    if not Path(directory).is_dir():
        return runs
    for path in sorted(Path(directory).glob("*.json")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            rows = summarise(raw["rows"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if rows:
            runs.append((path, dict(raw.get("meta") or {}), rows))
    return runs


def _rate(tokens_per_s: float | None) -> str:
    return f"{tokens_per_s:.1f}" if tokens_per_s else "-"


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per (batch, length): times, speed-ups, FLOPs and how close IC-Former runs to the FLOP bound."""
    header = (f"{'b':>3} {'n':>5} {'IC-F s':>8} {'ICAE s':>8} {'speedup':>8} {'prefill':>8} {'full s':>8} "
              f"{'IC-F tot':>9} {'vs full':>8} {'FLOPs IC-F':>11} {'FLOPs ICAE':>11} {'ratio':>6} "
              f"{'meas/exact':>10} {'GFLOP/s':>8} {'t/bound':>8} {'mem IC-F':>9} {'mem ICAE':>9} "
              f"{'dec tok/s':>9} {'full tok/s':>10}")
    lines = [header, "-" * len(header)]
    for r in summarise(rows):
        lines.append(
            f"{r['batch_size']:>3} {r['length']:>5} {r['icformer_s']:>8.4f} {r['icae_s']:>8.3f} "
            f"{r['speedup']:>7.1f}x {r['prefill_s']:>8.3f} {r['full_s']:>8.3f} "
            f"{r['icformer_total_s']:>9.3f} {r['total_speedup']:>7.2f}x {r['icformer_flops']:>11.3e} "
            f"{r['icae_flops']:>11.3e} {r['flops_ratio']:>5.1f}x {r['measured_over_exact']:>10.3f} "
            f"{r['gflops_per_s']:>8.1f} {r['time_over_flop_bound']:>7.2f}x "
            f"{r['icformer_memory'] / 2**20:>8.0f}M {r['icae_memory'] / 2**20:>8.0f}M "
            f"{_rate(r['decode_tokens_per_s']):>9} {_rate(r['full_decode_tokens_per_s']):>10}"
        )
    return "\n".join(lines)


def figure(rows: list[dict[str, Any]], meta: dict[str, Any]):
    """Time vs context length, log-log: both compressors, IC-Former's total, the full-context prefill."""
    import plotly.graph_objects as go

    fig = go.Figure()
    series = (("icformer", "compress_s", "IC-Former compress", "solid"),
              ("icae", "compress_s", "ICAE compress", "solid"),
              ("icformer", "total_s", "IC-Former compress + prefill", "dot"),
              ("full", "prefill_s", "full-context prefill", "dash"))
    for batch in sorted({r["batch_size"] for r in rows}):
        for method, column, name, dash in series:
            points = sorted((r["length"], r[column]) for r in rows if (r["method"], r["batch_size"]) == (method, batch))
            fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers",
                                     name=f"{name} (batch {batch})", line=dict(dash=dash)))
    fig.update_layout(
        title=f"Compression time vs context length — {meta['device_name']} ({meta['device']}, {meta['dtype']}, "
              f"{meta['threads']} threads), {meta['llm']}",
        xaxis=dict(title="context length (tokens)", type="log"),
        yaxis=dict(title="seconds (median)", type="log"),
        template="plotly_white",
    )
    return fig


def write_results(rows: list[dict[str, Any]], meta: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """bench.csv (rows), bench.json ({"meta", "rows"}) and bench.html (plotly figure; plotly.js from its CDN)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {suffix: out / f"{FILE_STEM}.{suffix}" for suffix in ("csv", "json", "html")}
    write_table(out, FILE_STEM, rows, COLUMNS, meta=meta, fmt=MEASUREMENTS)
    # plotly.js from its CDN keeps the committed file small; the app draws the same rows offline.
    figure(rows, meta).write_html(paths["html"], include_plotlyjs="cdn")
    return paths


def with_icae(cc: ContextCompressor, seed: int = 0) -> ContextCompressor:
    """`cc`, or (when it has no ICAE) its LLM and IC-Former plus a seeded random ICAE of the same k and L."""
    if cc.icae is not None:
        return cc
    config = cc.icformer.config
    return cc.replacing(icae=new_model("icae", cc.target, seed=seed, num_digest_tokens=config.num_digest_tokens,
                                       chunk_size=config.chunk_size))


# --------------------------------------------------------------------------- command line
