"""The results folder's README.md: `report_template.md` filled with this run's tables and findings.

The prose lives in the template, so it reads as the page it renders; this module computes what the
prose cannot say itself (formatted numbers, tables, the findings on each method against its floors).
"""

from __future__ import annotations

import math
from importlib import resources
from string import Template
from typing import Any, Sequence

from ..prompts import SHORT_ANSWER_INSTRUCTION
from ..results import ATTENTION_COLUMNS, NONE_FLOOR, SWAPPED, above_floor
from .attention import ATTENTION_WINDOWS
from .paper import paper_speed_rows
from .settings import EvalSettings


def fmt(value: Any) -> str:
    """A table cell as the README shows it: "–" when not measured, 3 significant digits or decimals."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict], columns: Sequence[str]) -> str:
    if not rows:
        return "_(no rows)_\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def with_ci(row: dict, name: str) -> str:
    """ "mean [low, high]" of a summary column and its interval."""
    if row.get(name) is None:
        return "–"
    low, high = row.get(f"{name}_lo"), row.get(f"{name}_hi")
    return fmt(row[name]) + ("" if low is None else f" [{fmt(low)}, {fmt(high)}]")


def _ceiling(full: dict, none: dict, max_new_tokens: int) -> str:
    """The finding on the full context against the question alone."""
    above = above_floor(full, "none")
    if above and (full.get("f1_over_none") or 0) >= (none.get("f1") or 0):
        verdict = "well above it"
    elif above:
        verdict = "above it, but by less than the floor itself scores: the ceiling is low"
    else:
        verdict = "not distinguishable from it" if above is False else "not compared"
    longer = (full.get("rougeL_p") or 0) < (full.get("rougeL_r") or 0)
    return (
        f"**Ceiling.** With the full context the LLM scores SQuAD F1 {with_ci(full, 'f1')} (exact match "
        f"{with_ci(full, 'exact_match')}); the `none` floor, the question alone, scores F1 {with_ci(none, 'f1')}. "
        f"The paired gain is {with_ci(full, 'f1_over_none')}: {verdict}. Its ROUGE-L recall is "
        f"{fmt(full.get('rougeL_r'))} and precision {fmt(full.get('rougeL_p'))}, with "
        f"{fmt(full.get('new_tokens'))} new tokens per answer of at most {max_new_tokens}"
        + (": it answers in sentences, not the references' few words, although told to be brief (in the "
           "samples it often restates the question), so token F1 stays far below an extractive reader's; a "
           "frozen 135M chat model is a weak reader, and this is what it does with the whole context."
           if longer else ".")
        + ("" if full.get("answer_ce_over_none") is None else
           f" Teacher-forced, the whole context makes the reference answer {with_ci(full, 'answer_ce_over_none')} "
           f"nats/token cheaper than the question alone ({with_ci(none, 'answer_ce')} nats/token): what a "
           "compressor's vectors can save at most, roughly."))


def _against_floors(label: str, row: dict) -> str:
    """The finding on one compressor against its two floors."""
    gains = {floor: above_floor(row, floor) for floor in ("none", "swapped")}
    if gains["none"] and gains["swapped"]:
        verdict = "above both floors: its answers use what its vectors carry"
    elif gains["none"]:
        verdict = ("above `none` but not above its swapped floor: its prompt helps, but any context of the task "
                   "does as well as the right one")
    elif gains["swapped"]:
        verdict = ("above its swapped floor but not above `none`: its answers depend on the context it "
                   "compressed, yet score no better than the question alone")
    else:
        verdict = "not above its floors: its answers do not depend on the context it compressed"
    return (f"**{label}**: F1 {with_ci(row, 'f1')}; minus `none` {with_ci(row, 'f1_over_none')}, minus "
            f"`{label}{SWAPPED}` {with_ci(row, 'f1_over_swapped')}: {verdict}." + _answer_likelihood(label, row))


def _answer_likelihood(label: str, row: dict) -> str:
    """The teacher-forced finding: whether the vectors make the reference answer likelier than a floor's."""
    if row.get("answer_ce") is None:
        return ""
    swapped = above_floor(row, "swapped", "answer_ce")
    finding = ("so its vectors carry something of the answer, even where the greedy answer does not show it"
               if swapped else "so its vectors do not make the reference answer likelier than another context's")
    return (f" Teacher-forced, the reference answer costs {with_ci(row, 'answer_ce')} nats/token; its vectors save "
            f"{with_ci(row, 'answer_ce_over_swapped')} against `{label}{SWAPPED}` and "
            f"{with_ci(row, 'answer_ce_over_none')} against `none`, {finding}.")


def qa_findings(rows: list[dict], max_new_tokens: int) -> list[str]:
    """Sentences on the ceiling and on each compressor against its floors, from qa_summary rows."""
    by = {r["method"]: r for r in rows}
    out = []
    full, none = by.get("full"), by.get(NONE_FLOOR)
    if full and none:
        out.append(_ceiling(full, none, max_new_tokens))
    out += [_against_floors(label, row) for label, row in by.items()
            if row.get("kind") == "method" and label != "full"]
    return out


def _warnings(meta: dict[str, Any]) -> str:
    """The random-weights and partial-run notes above the run's description."""
    out = ""
    untrained = [m for m, ok in meta["trained_by_method"].items() if not ok]
    if untrained:
        out += (f"> **Random weights.** These compressors were not trained when this ran: **{', '.join(untrained)}**. "
                "Their numbers are those of randomly initialised weights: they show that the harness works, not "
                "how well IC-Former or ICAE compress. `full` is the LLM reading the whole context.\n\n")
    if meta.get("unfinished"):
        out += ("> **Partial run.** Not every planned sample has finished: " + "; ".join(
            f"{section} {count}" for section, count in meta["unfinished"].items())
            + ". The tables cover the finished samples only (see each row's `n`); rerunning the command below "
            "computes the rest and reuses these.\n\n")
    return out


def _earlier(meta: dict[str, Any]) -> str:
    if not meta["earlier_invocations"]:
        return ""
    stopped = any(e.get("status") == "running" for e in meta["earlier_invocations"])
    return (f"; with {len(meta['earlier_invocations'])} earlier invocation(s) of the same settings, whose "
            "finished samples it reused, " + ("some stopped before recording their time" if stopped else
                                              f"{meta['total_seconds'] / 60:.1f} minutes in all"))


def _run_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """The "Run" and "What was measured" sections' values."""
    s, d, q = meta["settings"], EvalSettings(), EvalSettings.quick()
    samples = meta["samples"]
    return dict(
        warnings=_warnings(meta), minutes=f"{meta['seconds'] / 60:.1f}", earlier=_earlier(meta),
        sections=", ".join(f"{k} {v / 60:.1f} min" for k, v in meta["section_seconds"].items()) or "–",
        trained=", ".join(f"{m} {'yes' if ok else 'no (random weights)'}"
                          for m, ok in meta["trained_by_method"].items()),
        **{key: meta[key] for key in ("status", "mode", "date", "machine", "device", "torch", "transformers",
                                      "threads", "commit", "command", "llm", "llm_hash", "k", "L")},
        qa_count=samples.get("qa", "not run"), rec_count=samples.get("reconstruction", "not run"),
        rand_count=samples.get("randomness", "not run"),
        qa_files=" and ".join(f"`{f}`" for f in s["qa_files"]), length_buckets=", ".join(map(str, s["length_buckets"])),
        randomness_length=s["randomness_length"] or meta["L"],
        **{key: s[key] for key in ("seed", "qa_max_context_tokens", "batch_size", "length_samples", "bucket_width",
                                   "randomness_samples", "reconstruction_extra_tokens", "reconstruction_max_new_tokens",
                                   "max_new_tokens", "bootstrap_resamples")},
        reconstruction_no_repeat_ngram=s.get("reconstruction_no_repeat_ngram", 0),  # runs before it had none
        **{f"d_{key}": getattr(d, key) for key in ("qa_samples", "length_samples", "randomness_samples",
                                                   "bench_max_batch_tokens")},
        **{f"q_{key}": getattr(q, key) for key in ("qa_samples", "max_new_tokens", "length_samples",
                                                   "randomness_samples", "randomness_length")},
        q_length_buckets=", ".join(map(str, q.length_buckets)), instruction=SHORT_ANSWER_INSTRUCTION,
    )


def _intervals(rows: list[dict], columns: Sequence[str]) -> list[dict]:
    return [dict(r, **{c: with_ci(r, c) for c in columns}) for r in rows]


def _other_runs(other_runs: Sequence[tuple[str, dict[str, Any], list[dict[str, Any]]]]) -> str:
    """A table per benchmark run committed beside this one, the paper's Table 1 beside its rows."""
    paper, out = paper_speed_rows(), ""
    for name, run, rows in other_runs:
        table = markdown_table([{**r, "icformer_ms": r["icformer_s"] * 1e3, "icae_ms": r["icae_s"] * 1e3,
                                 **{f"paper_{k}": v for k, v in paper.get((r["batch_size"], r["length"]), {}).items()}}
                                for r in rows],
                               ("batch_size", "length", "icformer_ms", "icae_ms", "speedup", "paper_speedup",
                                "flops_ratio", "total_speedup", "paper_total_speedup", "time_over_flop_bound"))
        out += (f"### Also committed: `{name}`\n\n"
                f"{run.get('device_name', '?')} ({run.get('device', '?')}, {run.get('dtype', '?')}, torch "
                f"{run.get('torch', '?')}), {run.get('llm', '?')}, {str(run.get('date', '?'))[:10]}; one row per "
                "batch x length, the paper's Table 1 (RTX A6000, Llama-2-7B) beside the rows it reports.\n\n" + table + "\n")
    return out


def _tables(meta: dict[str, Any], tables: dict[str, list[dict]], bench: list[dict], bench_note: str) -> dict[str, str]:
    """Every table of the README, rendered."""
    paper = [{**r, "ours": with_ci(r, "ours"),
              "ours/paper": (r["ours"] / r["paper"]) if r["ours"] is not None else None}
             for r in tables["paper_vs_ours"]]
    rec_ci = ("bleu", "bleu_no_repeat", "ce", "ce_gap", "token_accuracy")
    return dict(
        findings="".join(f + "\n\n" for f in qa_findings(tables["qa_summary"], meta["settings"]["max_new_tokens"])),
        qa_table=markdown_table(
            _intervals(tables["qa_summary"], ("f1", "exact_match", "rougeL_f", "f1_over_none", "f1_over_swapped")),
            ("method", "kind", "n", "f1", "exact_match", "rougeL_f", "rougeL_p", "rougeL_r", "f1_over_none",
             "f1_over_swapped", "num_vectors", "new_tokens", "trained")),
        qa_by_task_table=markdown_table(_intervals(tables["qa_by_task"], ("f1", "rougeL_f", "f1_over_none")),
                                        ("dataset", "method", "n", "f1", "exact_match", "rougeL_f", "f1_over_none")),
        length_table=markdown_table(_intervals(tables["reconstruction_by_length"], rec_ci),
                                    ("method", "length_bucket", "n", "mean_tokens", "scored_tokens", "bleu",
                                     "corpus_bleu", "bleu_no_repeat", "ce", "ce_swapped", "ce_gap", "token_accuracy", "num_vectors",
                                     "trained")),
        randomness_table=markdown_table(_intervals(tables["reconstruction_by_randomness"], rec_ci),
                                        ("method", "kind", "length", "n", "scored_tokens", "bleu", "corpus_bleu",
                                         "bleu_no_repeat", "ce", "ce_swapped", "ce_gap", "token_accuracy", "trained")),
        bench_table=markdown_table(bench, ("method", "batch_size", "length", "compress_s", "prefill_s", "total_s",
                                           "speedup_vs_icae", "total_speedup_vs_full", "flops_exact",
                                           "flops_ratio_vs_icae")) if bench else f"_{bench_note or 'not run'}_\n",
        attention_table=markdown_table(tables["attention_by_layer"], ATTENTION_COLUMNS),
        paper_table=markdown_table(paper, ("table", "setting", "metric", "paper", "ours", "ours/paper", "trained")),
        notes="".join(line + "\n" for line in sorted(
            {f"- {r['table']}: {r['note']}" for r in tables["paper_vs_ours"] if r["ours"] is not None})),
    )


def render_readme(meta: dict[str, Any], tables: dict[str, list[dict]], bench: list[dict], bench_note: str,
                  other_runs: Sequence[tuple[str, dict[str, Any], list[dict[str, Any]]]] = ()) -> str:
    """README.md of a results folder, from what `run_evaluation` writes beside it."""
    template = Template(resources.files(__package__).joinpath("report_template.md").read_text(encoding="utf-8"))
    return template.substitute(
        **_run_fields(meta), **_tables(meta, tables, bench, bench_note), other_runs=_other_runs(other_runs),
        bench_count=meta["samples"].get("bench", bench_note or "not run"), attention_windows=ATTENTION_WINDOWS,
        bench_source=meta.get("bench_source") or "not run", bench_file=meta.get("bench_source") or "not here",
    )
