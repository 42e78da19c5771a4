"""One evaluation run: open every section's store, compute the chosen sections, write every file.

Resuming: each finished sample is appended to its JSONL at once, tagged with a key of what it
depends on (``store.py``). A rerun reuses rows whose id and key match and recomputes every summary
from the JSONL, so a new IC-Former checkpoint recomputes only IC-Former's rows; the summaries
always cover every finished sample of the current settings, so ``--sections qa`` leaves the
reconstruction tables in place. One run per directory at a time.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import transformers

from ..compressor import ContextCompressor
from ..files import atomic_write_text, write_jsonl
from ..results import FILES, RUN_DETAILS, TABLE_COLUMNS, read_json, write_json, write_table
from ..timing import machine_description, source_commit
from .attention import attention_rows
from .methods import REPO_ROOT, Method, build_methods, default_results_dir, resolve_no_pretrain
from .qa import QAPlan, open_qa, qa_samples, run_qa, summarise_qa
from .reconstruction import ReconstructionPlan, open_reconstruction, run_reconstruction, summarise_reconstruction
from .report import render_readme
from .settings import SECTIONS, EvalSettings
from .speed import BenchRows, flops_numbers, open_bench, other_bench_runs, run_bench
from .summary import our_numbers, paper_vs_ours
from .workspace import Workspace


def notes(ws: Workspace, qa_rows: list[dict]) -> dict[str, str]:
    """paper_vs_ours' notes per paper table: how our setting differs from the paper's."""
    cfg, s = ws.cc.icformer.config, ws.settings
    setting = f"k={cfg.num_digest_tokens} per L={cfg.chunk_size}"
    tasks = sorted({r["dataset"] for r in qa_rows})
    return {
        "Speed (Table 1)": f"ours on {ws.cc.device.type}, the paper on an RTX A6000: compare speed-ups, not seconds",
        "Memory:missing": "measured on CUDA only (peak allocation); a CPU run's process RSS is not comparable",
        "FLOPs (Table 2)": f"ours: the formula at our LLM's sizes, {setting}, 512 tokens; "
                           "the Llama-2-7B rows check the formula",
        "PwC QA (Table 4)": f"{setting}; {len(qa_rows)} held-out questions of {', '.join(tasks) or 'no task'}, "
                            f"not PwC; short answers (first line, at most {s.max_new_tokens} new tokens; "
                            "the paper: up to 256)",
        "Reconstruction (Fig. 5)": f"{setting} (the paper's 4x ratio); BLEU of the first "
                                   f"{s.reconstruction_max_new_tokens} tokens",
        "Text randomness (Table 5)": f"{setting}, {ws.randomness_length} tokens; BLEU of the first "
                                     f"{s.reconstruction_max_new_tokens}",
    }


class Evaluation:
    """The run's state between sections: each section's plan and store, the benchmark rows, timings."""

    def __init__(self, ws: Workspace, command: str, mode: str, bench_from: str | Path | None = None) -> None:
        self.ws, self.command, self.mode, self.bench_from = ws, command, mode, bench_from
        ws.checkpoint = self.checkpoint
        self.started, self._written = time.time(), 0.0  # when the files were last written
        self.seconds: dict[str, float] = {}
        self.qa: QAPlan | None = None
        self.rec: ReconstructionPlan | None = None
        self.bench = BenchRows()
        self._attention: list[dict] | None = None
        self.earlier: list[dict[str, Any]] = []
        self.source = source_commit()  # before this run writes its outputs, which may be tracked files

    def tables(self) -> dict[str, list[dict]]:
        """Every summary table of the samples finished so far, cut to its columns."""
        ws = self.ws
        samples = qa_samples(self.qa, ws.variants)
        rec_rows = self.rec.store.ordered() if self.rec else []
        boot = dict(resamples=ws.settings.bootstrap_resamples, seed=ws.settings.seed)
        qa = summarise_qa(samples, ws.variants, None, **boot)
        rec = summarise_reconstruction([r for r in rec_rows if r["kind"] == "length"], "length_bucket", **boot)
        rand = summarise_reconstruction([r for r in rec_rows if r["kind"] == "randomness"], "variant", "kind", **boot)
        trained = {label: m.trained for label, m in ws.methods.items()}
        ours, intervals = our_numbers(qa, rec, rand, self.bench.rows, flops_numbers(ws.cc), samples, **boot)
        if self._attention is None:
            self._attention = attention_rows(ws)
        tables = dict(
            qa_summary=qa,
            qa_by_task=summarise_qa(samples, ws.variants, "dataset", **boot),
            reconstruction_by_length=rec,
            reconstruction_by_randomness=rand,
            paper_vs_ours=paper_vs_ours(ours, notes(ws, samples), trained, intervals),
            attention_by_layer=self._attention,
        )
        return {stem: [{c: row.get(c) for c in TABLE_COLUMNS[stem]} for row in rows] for stem, rows in tables.items()}

    def checkpoint(self, every: float = 60.0) -> None:
        """Every `every` seconds of a section, all files as of now (so a killed run's README is current)."""
        if time.time() - self._written >= every:
            self.finish("running")

    def meta(self, status: str) -> dict[str, Any]:
        ws, cfg = self.ws, self.ws.cc.icformer.config
        trained = {label: m.trained for label, m in ws.methods.items()}
        untrained = [m for m, ok in trained.items() if not ok]
        commit, dirty = self.source
        return dict(
            llm=ws.cc.target.name, llm_hash=ws.cc.target.fingerprint[:16], device=str(ws.cc.device),
            machine=machine_description(ws.cc.device), trained=not untrained, trained_by_method=trained,
            k=cfg.num_digest_tokens, L=cfg.chunk_size,
            date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            commit=(commit[:12] + ("-dirty" if dirty else "")) if commit else None,
            command=self.command, torch=torch.__version__, transformers=transformers.__version__,
            threads=torch.get_num_threads(), mode=self.mode, status=status,
            seconds=round(time.time() - self.started, 1),
            section_seconds={k: round(v, 1) for k, v in self.seconds.items()},
            samples=ws.counts, bench_source=self.bench.source,
            # Earlier invocations of the same settings whose finished samples this one reused.
            earlier_invocations=self.earlier,
            total_seconds=round(time.time() - self.started + sum(e.get("seconds", 0) for e in self.earlier), 1),
            settings=asdict(ws.settings),
            notes=("Numbers of random (untrained) weights for: " + ", ".join(untrained) + ". They test the harness, "
                   "not the method.") if untrained else "All compressors trained.",
        )

    def missing(self) -> dict[str, str]:
        """Sections whose planned samples are not all finished: "<done> of <planned>" each."""
        stores = (("qa", self.qa and self.qa.store), ("reconstruction", self.rec and self.rec.store))
        return {section: store.missing() for section, store in stores if store is not None and store.missing()}

    def finish(self, status: str) -> dict[str, Any]:
        """Write everything; a run that ends with planned samples unfinished is "partial", not "complete"."""
        ws = self.ws
        tables = self.tables()
        for stem, rows in tables.items():
            write_table(ws.out, stem, rows, TABLE_COLUMNS[stem])
        if self.qa is not None:
            write_jsonl(ws.out / FILES["qa_samples"], qa_samples(self.qa, ws.variants))
        self._written = time.time()
        missing = self.missing()
        if status == "complete" and missing:
            status = "partial"
        meta = dict(self.meta(status), unfinished=missing)
        write_json(ws.out / FILES["meta"], {k: v for k, v in meta.items() if k not in RUN_DETAILS})
        write_json(ws.out / FILES["run"], {"date": meta["date"], "llm_hash": meta["llm_hash"],
                                           **{k: meta[k] for k in RUN_DETAILS}})
        atomic_write_text(ws.out / FILES["readme"], render_readme(meta, tables, self.bench.rows, self.bench.note,
                                                           other_bench_runs(ws, self.bench)))
        return dict(out_dir=str(ws.out), meta=meta, tables=tables, bench=self.bench.rows)

    def earlier_invocations(self) -> list[dict[str, Any]]:
        """The invocations recorded in run.json, when they ran these settings on this LLM."""
        previous: dict[str, Any] = {}
        for name in (FILES["meta"], FILES["run"]):
            try:
                found = read_json(self.ws.out / name)
            except (OSError, ValueError):
                continue
            previous.update(found if isinstance(found, dict) else {})

        def drop_sections(settings: dict | None) -> dict:  # which sections ran does not change any sample
            return {k: v for k, v in (settings or {}).items() if k != "sections"}

        settings = json.loads(json.dumps(asdict(self.ws.settings)))  # tuples as run.json holds them: lists
        same = (drop_sections(previous.get("settings")) == drop_sections(settings)
                and previous.get("llm_hash") == self.ws.cc.target.fingerprint[:16])
        if not same:
            return []
        last = {k: previous.get(k) for k in ("date", "command", "status", "seconds", "samples")}
        return list(previous.get("earlier_invocations", [])) + [last]

    def open(self) -> None:
        """Open every store whose data exists (so the summaries cover what exists), and the benchmark rows."""
        ws, wanted = self.ws, set(self.ws.settings.sections)
        ws.out.mkdir(parents=True, exist_ok=True)
        self.earlier = self.earlier_invocations()
        if "qa" in wanted or ws.has("eval.jsonl"):
            self.qa = open_qa(ws)
        if wanted & {"reconstruction", "randomness"} or ws.has("pretrain_valid.jsonl"):
            self.rec = open_reconstruction(ws)
        self.bench = open_bench(ws, self.bench_from)

    def run(self) -> dict[str, Any]:
        """Open every store, then compute the chosen sections in SECTIONS' order."""
        self.open()
        self.finish("running")
        steps = {"qa": lambda: run_qa(self.ws, self.qa),
                 "reconstruction": lambda: run_reconstruction(self.ws, self.rec, "length"),
                 "randomness": lambda: run_reconstruction(self.ws, self.rec, "randomness"),
                 "bench": lambda: run_bench(self.ws, self.bench, self.bench_from)}
        try:
            for section in SECTIONS:
                if section in self.ws.settings.sections:
                    start = time.time()
                    steps[section]()
                    self.seconds[section] = time.time() - start
                    self.finish("running")
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (`cli.run`): the files say what finished
            self.finish("partial")
            raise
        for plan in (self.qa, self.rec):
            if plan is not None:
                plan.store.rewrite()  # drops torn lines
        return self.finish("complete")


def run_evaluation(
    cc: ContextCompressor,
    out_dir: str | Path | None = None,
    *,
    quick: bool = False,
    data_dir: str | Path | None = None,
    settings: EvalSettings | None = None,
    no_pretrain: Any = "auto",
    bench_from: str | Path | None = None,
    command: str | None = None,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate `cc` (a ContextCompressor) and write the results schema (`icformer.results`) into `out_dir`.

    `out_dir` defaults to assets/results/ and `data_dir` to the repository's data/ (both
    resolved from this file, not the working directory).

    `quick`: a few minutes on a CPU (see `EvalSettings.quick`); `overrides` are EvalSettings
    fields. `no_pretrain`: "auto" (assets/checkpoints/icformer-no-pretrain when present), a
    checkpoint directory, a ContextCompressor, or None. `bench_from`: a bench.json written by
    `python -m icformer bench` whose rows stand in for the benchmark (when it exists). Returns
    {"out_dir", "meta", "tables", "bench"}: the rows of every summary table as written.
    """
    if settings is None:
        settings = EvalSettings.quick(**overrides) if quick else EvalSettings(**overrides)
    elif overrides:
        settings = replace(settings, **overrides)
    settings.check()
    methods: dict[str, Method] = build_methods(cc, resolve_no_pretrain(cc, no_pretrain))
    mode = ("quick" if quick else "full") if not set(overrides) - {"sections"} else "custom"
    ws = Workspace(cc, Path(out_dir) if out_dir is not None else default_results_dir(),
                   Path(data_dir) if data_dir is not None else REPO_ROOT / "data", settings, methods, progress)
    return Evaluation(ws, command or f"run_evaluation(quick={quick}) from Python", mode, bench_from).run()
