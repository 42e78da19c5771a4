"""Question answering on held-out questions: every method and its floors, one row per (question, variant).

Every method gets the same short-answer prompt (``prompts.short_answer_question``), greedy decoding
cut at the first line; ROUGE-1/2/L precision/recall/F1 and SQuAD exact match / F1, and ``answer_ce``,
the teacher-forced cross-entropy of the reference answer (nats/token). Two floors: ``none`` (the
question alone) and ``<method>-swapped`` (a method's vectors of another context of the task).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..files import read_jsonl
from ..metrics import rouge_scores, squad_scores
from ..prompts import SHORT_ANSWER_INSTRUCTION, prompt_style, question_layout, short_answer_question
from ..results import FILES, LOWER_IS_BETTER, NONE_FLOOR, QA_SCORES, SIGNAL_SCORES, SWAPPED
from . import decoding
from .methods import Method, Variant
from .store import SampleStore, settings_key
from .summary import mean, with_interval
from .workspace import Workspace


def select_questions(rows: list[dict], n: int, *, seed: int,
                     accept: Callable[[dict], bool]) -> list[tuple[dict, dict | None]]:
    """`n` (question, partner) pairs: a seeded shuffle, taking the tasks in turn; a smaller n is a prefix.

    A question's partner is the next accepted row of its task's shuffle with another context: the
    `swapped` floor answers the question from the partner's compressed context. None when the task
    has no other context.
    """
    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: str(r["id"])):
        by_task[str(row.get("task", "all"))].append(row)
    for task, group in by_task.items():
        random.Random(f"{seed}:qa:{task}").shuffle(group)

    verdicts: dict[int, bool] = {}

    def fits(row: dict) -> bool:  # accept() may tokenise: once per row
        if id(row) not in verdicts:
            verdicts[id(row)] = accept(row)
        return verdicts[id(row)]

    queues = {t: (r for r in by_task[t] if fits(r)) for t in sorted(by_task)}
    chosen: list[dict] = []
    while len(chosen) < n and queues:
        for task in list(queues):
            if len(chosen) >= n:
                break
            row = next(queues[task], None)
            if row is None:
                del queues[task]
            else:
                chosen.append(row)
    position = {id(r): i for group in by_task.values() for i, r in enumerate(group)}
    pairs = []
    for row in chosen:
        group, start, context = by_task[str(row.get("task", "all"))], position[id(row)], _normalised(row["input"])
        following = (group[(start + j) % len(group)] for j in range(1, len(group)))
        pairs.append((row, next((r for r in following if _normalised(r["input"]) != context and fits(r)), None)))
    return pairs


def _normalised(text: str) -> str:
    return " ".join(str(text).split()).lower()


def qa_scores(prediction: str, references: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L precision, recall and F1, and SQuAD exact match and F1, of one answer."""
    rouge = rouge_scores([prediction], [references])
    scores = {f"{t}_{s}": float(rouge[f"{t}_{name}"]) for t in ("rouge1", "rouge2", "rougeL")
              for s, name in (("p", "precision"), ("r", "recall"), ("f", "f1"))}
    squad = squad_scores([prediction], [references])
    scores.update(exact_match=float(squad["exact_match"]), f1=float(squad["f1"]))
    return scores


def context_read(variant: Variant, question: dict) -> str | None:
    """The text a variant's LLM reads for `question` ("" for none; None: nothing to read)."""
    if variant.reads == "own":
        return question["context"]
    if variant.reads == "partner":
        return question["partner"] and question["partner"]["context"]
    return ""


@dataclass
class QAPlan:
    """The chosen questions, every (sample id, question, variant) to answer, and the store of answers."""

    questions: list[dict]
    jobs: list[tuple[str, dict, Variant]]
    store: SampleStore
    compressed: dict[tuple[str, str], tuple[torch.Tensor, float]] = field(default_factory=dict)


def _questions(ws: Workspace) -> list[dict]:
    """The held-out questions of these settings, each with its partner (another context of its task)."""
    s = ws.settings
    files = [ws.data_dir / name for name in s.qa_files if ws.has(name)]
    if not files:
        ws.data(s.qa_files[0])  # raises, naming the command that writes it
    rows = [r for path in files for r in read_jsonl(path)
            if r.get("task") != "continuation" and r.get("prompt") and r.get("answer") is not None]
    lengths: dict[str, int] = {}

    def fits(row: dict) -> bool:
        try:
            lengths[str(row["id"])] = len(ws.cc.tokenize(row["input"]))
        except ValueError:
            return False
        return lengths[str(row["id"])] <= s.qa_max_context_tokens

    return [dict(
        id=str(row["id"]), dataset=str(row.get("task", "all")), context=row["input"], question=row["prompt"],
        reference=str(row["answer"]), references=[str(a) for a in (row.get("answers") or [row["answer"]])],
        num_tokens=lengths[str(row["id"])], partner=None if partner is None else dict(
            id=str(partner["id"]), context=partner["input"]),
    ) for row, partner in select_questions(rows, s.qa_samples, seed=s.seed, accept=fits)]


def open_qa(ws: Workspace) -> QAPlan:
    """Choose the questions and their partners, plan every (question, method or floor) and open the store."""
    questions = _questions(ws)
    jobs, planned = [], {}
    for variant in ws.variants:
        key = settings_key(dict(section="qa", llm=ws.cc.target.fingerprint, model=ws.fingerprints[variant.method.label],
                                reads=variant.reads, max_new_tokens=ws.settings.max_new_tokens,
                                instruction=SHORT_ANSWER_INSTRUCTION, stop="first line", scored="answer_ce"))
        for q in questions:
            read = context_read(variant, q)
            if read is None:
                continue  # no partner: no swapped floor for this question
            sample_id = f"{q['id']}|{variant.label}|" + settings_key(dict(read=read, question=q["question"],
                                                                          references=q["references"]))[:8]
            jobs.append((sample_id, q, variant))
            planned[sample_id] = key
    order = {q["id"]: i for i, q in enumerate(questions)}
    jobs.sort(key=lambda p: order[p[1]["id"]])
    store = SampleStore(ws.out / FILES["qa_answers"],
                        dict(sorted(planned.items(), key=lambda kv: order[kv[0].split("|")[0]])))
    ws.counts["qa"] = (f"{len(questions)} questions x {len(ws.variants)} methods and floors: "
                       f"{len(jobs)} answers ({len(store.rows)} finished earlier)")
    return QAPlan(questions, jobs, store)


def _vectors_for(ws: Workspace, plan: QAPlan, method: Method, text: str) -> tuple[torch.Tensor, float]:
    """Vectors of `text` by `method` (compressed once per run: a context is also another's partner)."""
    if method.model is None:
        return decoding.encode_timed(method, ws.cc.tokenize(text)) if text else (ws.cc.target.embed(
            torch.zeros(0, dtype=torch.long, device=ws.cc.device)), 0.0)
    cache_key = (method.label, text)
    if cache_key not in plan.compressed:
        plan.compressed[cache_key] = decoding.encode_timed(method, ws.cc.tokenize(text))
    return plan.compressed[cache_key]


def _priority(ws: Workspace, variant: Variant) -> int:
    """Computing order: the ceiling and `none` first, then each method just before its swapped floor,
    so a run stopped early has methods with their floors rather than methods without."""
    if variant.label in ("full", NONE_FLOOR):
        return ("full", NONE_FLOOR).index(variant.label) - 2
    return 2 * list(ws.methods).index(variant.method.label) + (variant.reads == "partner")


def _answer(ws: Workspace, plan: QAPlan, variant: Variant, chunk: list[tuple[str, dict, Variant]]) -> None:
    """Answer one batch of a variant's questions and store each answer with its scores."""
    model = variant.method.model
    inputs = [_vectors_for(ws, plan, variant.method, context_read(variant, q)) for _, q, _ in chunk]
    layouts = [question_layout(ws.cc.tokenizer, short_answer_question(q["question"]),
                               task=None if model is None else "FT", style=prompt_style(model))
               for _, q, _ in chunk]
    items = [(model, layout, vectors) for layout, (vectors, _) in zip(layouts, inputs)]
    outputs = decoding.generate_batch(ws.cc, items, ws.settings.max_new_tokens, first_line=True)
    references = [ws.cc.tokenizer(q["reference"], add_special_tokens=False)["input_ids"][:ws.settings.max_new_tokens]
                  or [ws.cc.tokenizer.eos_token_id] for _, q, _ in chunk]
    answer_ce = decoding.teacher_forced_ce(ws.cc, items, references)
    for (sample_id, q, _), (vectors, seconds), (ids, text), ce in zip(chunk, inputs, outputs, answer_ce):
        plan.store.add(dict(id=sample_id, question_id=q["id"], variant=variant.label, kind=variant.kind,
                            text=text, **qa_scores(text, q["references"]), answer_ce=ce, num_vectors=len(vectors),
                            trained=variant.method.trained,
                            timings=dict(compress_s=seconds if model is not None else 0.0, new_tokens=len(ids))))


def run_qa(ws: Workspace, plan: QAPlan) -> None:
    """Answer every planned question not yet in the store, variant by variant, in batches."""
    size = ws.settings.batch_size
    todo = [p for p in plan.jobs if p[0] not in plan.store]
    ws.counts["qa"] = (f"{len(plan.questions)} questions x {len(ws.variants)} methods and floors: "
                       f"{len(plan.jobs)} answers ({len(plan.jobs) - len(todo)} reused)")
    with ws.bar(len(plan.jobs), "qa") as bar:
        bar.update(len(plan.jobs) - len(todo))
        for variant in sorted(ws.variants, key=lambda v: _priority(ws, v)):
            # Similar lengths decode together: less padding.
            jobs = sorted((p for p in todo if p[2] is variant), key=lambda p: p[1]["num_tokens"])
            for start in range(0, len(jobs), size):
                chunk = jobs[start:start + size]
                _answer(ws, plan, variant, chunk)
                bar.update(len(chunk))
                ws.checkpoint()


def qa_samples(plan: QAPlan | None, variants: Sequence[Variant]) -> list[dict]:
    """One row per question with every answer (qa_samples.jsonl, the app's per-sample browser)."""
    if plan is None:
        return []
    answers: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in plan.store.ordered():
        answers[row["question_id"]][row["variant"]] = {
            k: v for k, v in row.items() if k not in ("id", "question_id", "variant", "config")}
    labels = [v.label for v in variants]
    return [dict({k: v for k, v in q.items() if k != "partner"},
                 partner=q["partner"] and q["partner"]["id"],
                 answers={label: answers[q["id"]][label] for label in labels if label in answers[q["id"]]})
            for q in plan.questions if answers[q["id"]]]


def _gains(summary: dict[str, Any], label: str, mine: list[dict], resamples: int, seed: int) -> None:
    """A method's paired gain over each floor, with intervals: per question, how far its score beats
    the floor's (its score minus the floor's; for a loss, the floor's minus its)."""
    for floor, name in ((NONE_FLOOR, "none"), (label + SWAPPED, "swapped")):
        for score in SIGNAL_SCORES:
            sign = -1.0 if score in LOWER_IS_BETTER else 1.0
            gains = [sign * (s["answers"][label][score] - s["answers"][floor][score]) for s in mine
                     if floor in s["answers"]]
            with_interval(summary, f"{score}_over_{name}", gains, resamples, seed)


def summarise_qa(samples: list[dict], variants: Sequence[Variant], by: str | None, *, resamples: int,
                 seed: int) -> list[dict]:
    """One row per (dataset, method or floor): mean scores with intervals, and each method's paired
    gain over its floors (`f1_over_none`: per question, its F1 minus the `none` F1, averaged)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for sample in samples:
        groups["all" if by is None else str(sample.get(by, "all"))].append(sample)
    out = []
    for dataset in sorted(groups):
        for variant in variants:
            mine = [s for s in groups[dataset] if variant.label in s["answers"]]
            if not mine:
                continue
            answers = [s["answers"][variant.label] for s in mine]
            summary: dict[str, Any] = dict(method=variant.label, dataset=dataset, kind=variant.kind, n=len(answers))
            for score in QA_SCORES:
                with_interval(summary, score, [a.get(score) for a in answers], resamples, seed)
            if variant.kind == "method":
                _gains(summary, variant.label, mine, resamples, seed)
            summary.update(
                num_vectors=mean(a.get("num_vectors") for a in answers),
                k=variant.method.k,
                mean_context_tokens=mean(s.get("num_tokens") for s in mine),
                trained=answers[0].get("trained"),
                compress_s=mean(a.get("timings", {}).get("compress_s") for a in answers),
                new_tokens=mean(a.get("timings", {}).get("new_tokens") for a in answers),
            )
            out.append(summary)
    return out
