"""Autoencoding quality against context length (the paper's Fig. 5 / Table 3), one row per (window, method).

Windows of ``pretrain_valid.jsonl`` in token-length buckets; greedy reconstruction capped at
``reconstruction_max_new_tokens``, its prefix scored by sentence BLEU-4 (averaged, with intervals)
and corpus BLEU-4, plus the teacher-forced cross-entropy of the same original tokens given the
reconstruction prompt (``[vectors][AE]<bos>`` in the default prompt style, ``prompts.py``), and
the same given the vectors of another window (the next of its kind in the plan): their difference,
the swap gap, is what the vectors carry of their own window, which BLEU cannot show while
reconstructions are still unreadable. A second greedy decoding of the same vectors never repeats an
n-gram (``reconstruction_no_repeat_ngram``, ``bleu_no_repeat``): an undertrained compressor's
reconstructions loop on a phrase, and the block shows what else they hold. The randomness sequences
(``randomness.py``) share the store and the scoring.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from ..files import sha256_file
from ..metrics import bleu_score, sentence_bleu
from ..objectives import CompressionObjective, autoencoding_example
from ..prompts import prompt_style, reconstruction_layout
from ..results import FILES, RANDOMNESS_KINDS, order_methods
from . import decoding
from .methods import Method
from .randomness import randomness_plan
from .store import SampleStore, settings_key
from .summary import mean, with_interval
from .workspace import Workspace

SECTION_OF = {"length": "reconstruction", "randomness": "randomness"}  # a sample's kind -> its section


@torch.no_grad()
def reconstruction_ce(method: Method, ids: list[int], scored: int, context_ids: list[int] | None = None) -> float:
    """Mean token cross-entropy (nats) of the first `scored` tokens of `ids` (+ EOS when that is all
    of them) given the method's reconstruction prompt ([vectors][AE]<bos> in the default style),
    teacher-forced, the compressor reading all of `context_ids` (default: `ids` itself)."""
    example = autoencoding_example(method.cc.tokenizer, ids, prompt_style(method.model))
    if scored < len(ids):
        example = replace(example, target_ids=list(ids[:scored]))
    if context_ids is not None:
        example = replace(example, context_ids=list(context_ids))
    loss, _ = CompressionObjective(method.model, method.cc.target)([example])
    return float(loss)


@dataclass
class ReconstructionPlan:
    """Every (window id, row fields, ids maker) of these settings, and the store of their reconstructions."""

    windows: list[tuple[str, dict, Callable[[], list[int]]]]
    store: SampleStore
    ids: dict[str, list[int]] = field(default_factory=dict)  # each window's tokens, made once

    def window_ids(self, window: str, make: Callable[[], list[int]]) -> list[int]:
        if window not in self.ids:
            self.ids[window] = make()
        return self.ids[window]

    def partner(self, window: str) -> tuple[str, list[int]]:
        """(name, tokens) of the window whose vectors stand in for `window`'s in the swapped score: the
        next window of the same kind in the plan, cyclically (the same bucket or randomness kind but
        for each group's last window)."""
        kind = next(fields["kind"] for name, fields, _ in self.windows if name == window)
        same = [(name, make) for name, fields, make in self.windows if fields["kind"] == kind]
        at = [name for name, _ in same].index(window)
        name, make = same[(at + 1) % len(same)]
        return name, self.window_ids(name, make)


def length_plan(ws: Workspace) -> list[tuple[str, dict, Callable[[], list[int]]]]:
    """(id, row fields, ids maker) of every length-bucket window of these settings."""
    s, plan = ws.settings, []
    for edge in s.length_buckets:
        for i in range(s.length_samples):
            def make(edge=edge, i=i):
                rng = random.Random(f"{s.seed}:length:{edge}:{i}")
                low = max(1, edge - s.bucket_width + 1)
                return ws.text_source().window(rng.randint(low, edge), rng)
            plan.append((f"len{edge}-{i:02d}", dict(kind="length", length_bucket=edge), make))
    return plan


def open_reconstruction(ws: Workspace) -> ReconstructionPlan:
    """Plan the length windows and randomness sequences, and open their store."""
    s, data = ws.settings, sha256_file(ws.data("pretrain_valid.jsonl"))
    keys = {label: settings_key(dict(section="reconstruction", llm=ws.cc.target.fingerprint,
                                     model=ws.fingerprints[label], extra=s.reconstruction_extra_tokens,
                                     cap=s.reconstruction_max_new_tokens, width=s.bucket_width, seed=s.seed, data=data,
                                     no_repeat=s.reconstruction_no_repeat_ngram,
                                     swapped="next-of-kind"))
            for label in ws.compressors}
    windows = length_plan(ws) + randomness_plan(ws)
    planned = {f"{window}|{label}": keys[label] for window, _, _ in windows for label in ws.compressors}
    plan = ReconstructionPlan(windows, SampleStore(ws.out / FILES["rec_samples"], planned))
    for kind, section in SECTION_OF.items():
        ids = [f"{w}|{label}" for w, fields, _ in windows if fields["kind"] == kind for label in ws.compressors]
        ws.counts[section] = (f"{len(ids) // max(1, len(ws.compressors))} sequences x {len(ws.compressors)} "
                              f"methods ({sum(i in plan.store for i in ids)} finished earlier)")
    return plan


def _reconstruct(ws: Workspace, plan: ReconstructionPlan, label: str, method: Method, chunk: list) -> None:
    """Reconstruct one batch of (window, fields, ids) and store each with its scores."""
    s, tokenizer = ws.settings, ws.cc.tokenizer
    layout = reconstruction_layout(tokenizer, prompt_style(method.model))
    cap = s.reconstruction_max_new_tokens
    limits = [min(len(ids) + s.reconstruction_extra_tokens, cap) for _, _, ids in chunk]
    encoded = [decoding.encode_timed(method, ids) for _, _, ids in chunk]
    prompts = [(method.model, layout, v) for v, _ in encoded]
    outputs = decoding.generate_batch(ws.cc, prompts, max(limits))
    # The same vectors decoded so that no phrase comes twice: what a reconstruction that loops would say next.
    n = s.reconstruction_no_repeat_ngram
    blocked = decoding.generate_batch(ws.cc, prompts, max(limits), no_repeat_ngram=n) if n else [None] * len(chunk)
    for (window, fields, ids), (vectors, seconds), (out_ids, _), other, limit in zip(chunk, encoded, outputs, blocked,
                                                                                    limits):
        scored, out_ids = min(len(ids), cap), out_ids[:limit]  # greedy: a shorter limit is a prefix
        reference = tokenizer.decode(ids[:scored], skip_special_tokens=True).strip()
        text = tokenizer.decode(out_ids, skip_special_tokens=True).strip()
        text_no_repeat = None if other is None else tokenizer.decode(other[0][:limit], skip_special_tokens=True).strip()
        ce = reconstruction_ce(method, ids, scored)
        partner, partner_ids = plan.partner(window)
        swapped = reconstruction_ce(method, ids, scored, partner_ids)
        plan.store.add(dict(
            id=f"{window}|{label}", window=window, method=label, **fields, num_tokens=len(ids),
            scored_tokens=scored, reference=reference, text=text, bleu=sentence_bleu(text, reference),
            text_no_repeat=text_no_repeat,
            bleu_no_repeat=None if text_no_repeat is None else sentence_bleu(text_no_repeat, reference),
            ce=ce, partner=partner, ce_swapped=swapped, ce_gap=swapped - ce,
            token_accuracy=sum(a == b for a, b in zip(out_ids, ids[:scored])) / scored,
            num_vectors=len(vectors), trained=method.trained, compress_s=seconds, new_tokens=len(out_ids)))


def run_reconstruction(ws: Workspace, plan: ReconstructionPlan, kind: str) -> None:
    """Reconstruct the planned windows of `kind` ("length" or "randomness") not yet in the store."""
    windows = [p for p in plan.windows if p[1]["kind"] == kind]
    todo = [(window, fields, make, label) for window, fields, make in windows for label in ws.compressors
            if f"{window}|{label}" not in plan.store]
    total, section = len(windows) * len(ws.compressors), SECTION_OF[kind]
    ws.counts[section] = f"{len(windows)} sequences x {len(ws.compressors)} methods ({total - len(todo)} reused)"
    with ws.bar(total, section) as bar:
        bar.update(total - len(todo))
        for label, method in ws.compressors.items():
            jobs = sorted(((w, f, plan.window_ids(w, m)) for w, f, m, lab in todo if lab == label),
                          key=lambda job: len(job[2]))
            for start in range(0, len(jobs), ws.settings.batch_size):
                chunk = jobs[start:start + ws.settings.batch_size]
                _reconstruct(ws, plan, label, method, chunk)
                bar.update(len(chunk))
                ws.checkpoint()


def summarise_reconstruction(rows: list[dict], group: str, column: str | None = None, *, resamples: int,
                             seed: int) -> list[dict]:
    """Per (method, `group` value, shown as `column`): mean sentence BLEU, CE (own and swapped
    vectors, and their paired gap) and token accuracy with intervals, and corpus BLEU, of one row per
    (window, method)."""
    groups: dict[tuple[str, Any], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], row[group])].append(row)
    order = {label: i for i, label in enumerate(order_methods({g[0] for g in groups}))}
    kinds = {k: i for i, k in enumerate(RANDOMNESS_KINDS)}
    out = []
    for (label, value), results in sorted(groups.items(), key=lambda item: (order[item[0][0]],
                                                                             kinds.get(item[0][1], item[0][1]))):
        summary: dict[str, Any] = {"method": label, column or group: value, "length": results[0]["num_tokens"]}
        for score in ("bleu", "bleu_no_repeat", "ce", "ce_swapped", "ce_gap", "token_accuracy"):
            with_interval(summary, score, [r.get(score) for r in results], resamples, seed)
        summary.update(
            corpus_bleu=bleu_score([r["text"] for r in results], [r["reference"] for r in results]),
            n=len(results),
            num_vectors=mean(r.get("num_vectors") for r in results),
            mean_tokens=mean(r["num_tokens"] for r in results),
            scored_tokens=mean(r.get("scored_tokens") for r in results),
            trained=results[0].get("trained"),
            compress_s=mean(r.get("compress_s") for r in results),
        )
        out.append(summary)
    return out
