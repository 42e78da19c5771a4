"""`python -m icformer evaluate` on the tiny Llama: the results schema, resuming, --quick, the app's reader."""

import csv
import json
import random
import warnings
from pathlib import Path

import pytest
import torch

from app.results import load_bench_results, load_results
from icformer import ContextCompressor, UntrainedWarning
from icformer import evaluate
from icformer.evaluate import decoding, runner
from icformer.cli import main
from icformer.evaluate import (
    PAPER_NUMBERS,
    QA_COLUMNS,
    RANDOMNESS_KINDS,
    REC_COLUMNS,
    EvalSettings,
    TextSource,
    allowed_ids,
    randomness_ids,
    run_evaluation,
)
from icformer.compressors.icae import ICAEConfig, ICAEModel
from icformer.llm import load_llm
from icformer.metrics import sentence_bleu
from icformer.timing import source_commit

from .conftest import TINY_K, TINY_L, make_tiny_icformer

WORDS = ("river stone lamp garden winter letter harbour captain music window bread orchard silver "
         "morning travel quiet market bridge").split()


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 10))).capitalize() + "."


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's matmuls are too small to share out; extra threads only contend on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Made-up evaluation and validation data in the project's formats."""
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("eval-data")
    passages = [
        {"id": f"made-up/doc{d}#{p:04d}", "text": " ".join(_sentence(rng) for _ in range(6)), "document": f"doc{d}"}
        for d in range(3) for p in range(6)
    ]
    questions = []
    for i in range(8):
        task = ("alpha", "beta")[i % 2]
        answer = rng.choice(WORDS)
        context = " ".join(_sentence(rng) for _ in range(3)) + f" The keeper's word is {answer}."
        questions.append({"id": f"{task}/{i:03d}", "input": context, "prompt": "What is the keeper's word?",
                          "answer": answer, "answers": [answer], "task": task})
    for name, rows in (("pretrain_valid.jsonl", passages), ("eval.jsonl", questions)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def cc(tiny_llm_dir):
    """IC-Former and ICAE on their own tiny LLM (an ICAE adapter is injected into its LLM)."""
    target = load_llm(str(tiny_llm_dir), device="cpu")
    torch.manual_seed(0)
    icae = ICAEModel(ICAEConfig.for_llm(target.model.config, TINY_K, TINY_L, lora_r=4), target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        return ContextCompressor(target, make_tiny_icformer(target), icae, max_context_tokens=2048)


SMALL = dict(qa_samples=4, max_new_tokens=5, length_buckets=(20, 40), bucket_width=10, length_samples=1,
             randomness_length=12, randomness_samples=1, reconstruction_extra_tokens=2,
             reconstruction_max_new_tokens=16, bootstrap_resamples=200, batch_size=3,
             bench_lengths=(32,), bench_batch_sizes=(1,), bench_repeats=1)
METHODS = ["icformer", "icae", "full"]
FLOORS = ["none", "icformer-swapped", "icae-swapped"]


def _header(path):
    with open(path, newline="") as handle:
        return next(csv.reader(handle))


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class CountingGenerate:
    """Counts the prompts the evaluation decodes (it decodes them in batches)."""

    def __init__(self, monkeypatch):
        self.calls, original = 0, decoding.generate_batch

        def counted(cc, items, *args, **kwargs):
            self.calls += len(items)
            return original(cc, items, *args, **kwargs)

        monkeypatch.setattr(decoding, "generate_batch", counted)


def test_writes_the_documented_schema_and_the_app_reads_it(cc, data_dir, tmp_path):
    no_pretrain_dir = make_tiny_icformer(cc.target, seed=1).save_pretrained(tmp_path / "no-pretrain", trained=False)
    out = tmp_path / "results"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        result = run_evaluation(cc, out, data_dir=data_dir, no_pretrain=no_pretrain_dir, progress=False,
                                command="pytest", **SMALL)

    assert _header(out / "qa_summary.csv") == list(QA_COLUMNS)
    assert _header(out / "reconstruction_by_length.csv") == list(REC_COLUMNS)
    assert _header(out / "paper_vs_ours.csv") == list(evaluate.PVO_COLUMNS)
    assert {"ours_lo", "ours_hi"} <= set(evaluate.PVO_COLUMNS)
    for stem in result["tables"]:
        assert json.loads((out / f"{stem}.json").read_text())["rows"] == json.loads(
            json.dumps(result["tables"][stem], default=str))

    methods = ["icformer", "icae", "full", "icformer-no-pretrain"]
    labels = methods + ["none", "icformer-swapped", "icae-swapped", "icformer-no-pretrain-swapped"]
    qa = {r["method"]: r for r in result["tables"]["qa_summary"]}
    assert list(qa) == labels and all(r["n"] == 4 and r["dataset"] == "all" for r in qa.values())
    assert [qa[m]["kind"] for m in labels] == ["method"] * 4 + ["floor"] * 4
    assert qa["full"]["trained"] is True and qa["icformer"]["trained"] is False
    assert {r["dataset"] for r in result["tables"]["qa_by_task"]} == {"alpha", "beta"}
    for row in result["tables"]["qa_summary"]:  # every mean has its interval around it
        for score in ("f1", "rougeL_f", "exact_match", "rouge1_p"):
            assert row[f"{score}_lo"] <= row[score] + 1e-9 and row[score] <= row[f"{score}_hi"] + 1e-9
    for m in methods:  # the gain over a floor is the paired difference of the means
        assert qa[m]["f1_over_none"] == pytest.approx(qa[m]["f1"] - qa["none"]["f1"])
        assert qa[m]["f1_over_none_lo"] <= qa[m]["f1_over_none"] <= qa[m]["f1_over_none_hi"]
    assert qa["icformer"]["f1_over_swapped"] == pytest.approx(qa["icformer"]["f1"] - qa["icformer-swapped"]["f1"])
    assert qa["full"]["f1_over_swapped"] is None and qa["none"]["f1_over_none"] is None
    assert qa["icformer"]["answer_ce_over_swapped"] == pytest.approx(
        qa["icformer-swapped"]["answer_ce"] - qa["icformer"]["answer_ce"])
    assert all(r["answer_ce"] > 0 for r in qa.values())

    samples = _jsonl(out / "qa_samples.jsonl")
    assert len(samples) == 4 and len({s["id"] for s in samples}) == 4
    assert len(_jsonl(out / "qa_answers.jsonl")) == 4 * len(labels)
    for sample in samples:
        assert {"id", "dataset", "context", "question", "reference", "num_tokens", "partner", "answers"} <= set(sample)
        assert list(sample["answers"]) == labels
        for answer in sample["answers"].values():
            assert {"text", "rouge1_f", "rouge2_f", "rougeL_f", "exact_match", "f1", "trained", "timings",
                    "kind"} <= set(answer)
            assert all(0.0 <= answer[m] <= 1.0 for m in ("rouge1_p", "rougeL_r", "f1"))
            assert {"compress_s", "new_tokens"} <= set(answer["timings"])
        assert sample["answers"]["none"]["num_vectors"] == 0  # the question alone
        assert sample["answers"]["full"]["num_vectors"] == sample["num_tokens"]

    rec = result["tables"]["reconstruction_by_length"]
    assert [(r["method"], r["length_bucket"]) for r in rec] == [("icformer", 20), ("icformer", 40), ("icae", 20),
                                                                ("icae", 40)]
    assert all(r["ce"] > 0 and 0 <= r["bleu_lo"] <= r["bleu"] <= r["bleu_hi"] <= 1 and r["n"] == 1 for r in rec)
    assert all(r["ce_gap"] == pytest.approx(r["ce_swapped"] - r["ce"]) for r in rec)
    windows = [s for s in _jsonl(out / "reconstruction_samples.jsonl") if s["kind"] == "length"]
    by_window = {s["window"]: s for s in windows if s["method"] == "icformer"}
    for sample in by_window.values():  # scored with another window's vectors, of the same kind
        assert sample["partner"] != sample["window"] and sample["partner"] in by_window
        assert sample["ce_swapped"] != sample["ce"]
    assert all(r["bleu_no_repeat_lo"] <= r["bleu_no_repeat"] <= r["bleu_no_repeat_hi"] for r in rec)
    for sample in windows:  # the same vectors decoded again with the n-gram block, scored the same way
        assert sample["bleu_no_repeat"] == sentence_bleu(sample["text_no_repeat"], sample["reference"])
    assert any(s["text_no_repeat"] != s["text"] for s in windows)  # the random tiny models loop
    rand = result["tables"]["reconstruction_by_randomness"]
    assert [r["kind"] for r in rand] == list(RANDOMNESS_KINDS) * 2 and {r["length"] for r in rand} == {12}

    pvo = result["tables"]["paper_vs_ours"]
    assert len(pvo) == len(PAPER_NUMBERS)
    measured = {(r["setting"], r["metric"]): r for r in pvo if r["ours"] is not None}
    assert ("IC-Former 128 digests", "rougeL_f") in measured and ("ICAE 512 tokens", "flops") in measured
    qa_row = measured[("IC-Former 128 digests", "rougeL_f")]
    assert qa_row["ours_lo"] <= qa_row["ours"] <= qa_row["ours_hi"]
    assert measured[("ICAE 512 tokens", "flops")]["ours_lo"] is None  # a formula, no interval
    assert measured[("ICAE formula at Llama-2-7B sizes", "flops")]["ours"] == pytest.approx(8.50e12, rel=0.01)
    assert measured[("IC-Former formula at Llama-2-7B sizes", "flops")]["ours"] == pytest.approx(2.62e11, rel=0.01)

    attention = result["tables"]["attention_by_layer"]
    layers = cc.icformer.config.num_layers
    assert [(r["method"], r["layer"]) for r in attention] == [
        (m, i) for m in ("icformer", "icformer-no-pretrain") for i in range(1, layers + 1)]
    assert all(r["n"] == 8 and 0 < r["window_mass"] <= 1 and -1 <= r["order_correlation"] <= 1 for r in attention)
    assert attention[0]["trained"] is False

    meta = json.loads((out / "meta.json").read_text())
    assert {"llm", "device", "trained", "trained_by_method", "date", "commit", "command", "torch", "threads"} <= set(
        meta)
    assert meta["trained_by_method"] == {"icformer": False, "icae": False, "full": True, "icformer-no-pretrain": False}
    assert meta["command"] == "pytest" and meta["status"] == "complete"
    readme = (out / "README.md").read_text()
    assert "Random weights" in readme and "`pytest`" in readme and meta["date"] in readme
    assert "## Attention analysis" in readme
    assert "**`none`**" in readme and "**Ceiling.**" in readme and "`icformer-swapped`" in readme

    # The app's Evaluation and Speed tabs read all of it.
    res = load_results(out)
    assert res.problems == []
    assert set(res.qa_summary["method"]) == set(labels) and "f1_lo" in res.qa_summary.columns
    assert set(res.reconstruction["length_bucket"]) == {20, 40}
    assert "ours/paper" in res.paper_vs_ours.columns
    assert len(res.samples) == 4 and res.sample_methods == labels
    assert {"qa_by_task", "reconstruction_by_randomness", "attention_by_layer"} <= set(res.extra_tables)
    bench, problems = load_bench_results(out / "bench")
    assert problems == [] and {"icformer", "icae"} <= set(bench["method"])


def test_a_rerun_skips_finished_samples(cc, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "results"
    settings = dict(SMALL, sections=("qa", "reconstruction"), qa_samples=2, length_buckets=(20,))
    counter = CountingGenerate(monkeypatch)
    run_evaluation(cc, out, data_dir=data_dir, no_pretrain=None, progress=False, **settings)
    per_question = len(METHODS + FLOORS)
    # questions x (methods + floors) + windows x compressors x (greedy, greedy without repeated n-grams)
    assert counter.calls == 2 * per_question + 1 * 2 * 2
    stores = ("qa_answers.jsonl", "qa_samples.jsonl", "reconstruction_samples.jsonl")
    before = {name: (out / name).read_text() for name in stores}

    counter.calls = 0
    run_evaluation(cc, out, data_dir=data_dir, no_pretrain=None, progress=False, **settings)
    assert counter.calls == 0
    assert {name: (out / name).read_text() for name in before} == before
    meta, run = json.loads((out / "meta.json").read_text()), json.loads((out / "run.json").read_text())
    assert len(run["earlier_invocations"]) == 1 and meta["total_seconds"] >= meta["seconds"]
    assert "1 earlier invocation(s)" in (out / "README.md").read_text()

    # One more question: only it is computed; a half-written last line is dropped.
    with open(out / "qa_answers.jsonl", "a") as handle:
        handle.write('{"id": "torn')
    result = run_evaluation(cc, out, data_dir=data_dir, no_pretrain=None, progress=False,
                            **dict(settings, qa_samples=3))
    assert counter.calls == per_question
    assert [r["n"] for r in result["tables"]["qa_summary"]] == [3] * per_question
    assert len(_jsonl(out / "qa_samples.jsonl")) == 3 and len(_jsonl(out / "qa_answers.jsonl")) == 3 * per_question

    # Other settings (a longer generation) set these rows aside; going back brings them back. Sections
    # not run keep their summaries.
    result = run_evaluation(cc, out, data_dir=data_dir, no_pretrain=None, progress=False,
                            **dict(settings, qa_samples=1, max_new_tokens=6, sections=("qa",)))
    assert len(_jsonl(out / "qa_samples.jsonl")) == 1
    assert [r["n"] for r in result["tables"]["reconstruction_by_length"]] == [1, 1]
    assert (out / "reconstruction_by_length.csv").is_file()
    counter.calls = 0
    run_evaluation(cc, out, data_dir=data_dir, no_pretrain=None, progress=False, **dict(settings, qa_samples=3))
    assert counter.calls == 0 and len(_jsonl(out / "qa_samples.jsonl")) == 3


def test_a_new_checkpoint_recomputes_only_its_own_rows(cc, data_dir, tmp_path, monkeypatch):
    """Samples are keyed by what they depend on: the full context and `none` by the LLM alone."""
    out = tmp_path / "results"
    settings = dict(SMALL, sections=("qa", "reconstruction"), qa_samples=2, length_buckets=(20,))
    run_evaluation(cc, out, data_dir=data_dir, no_pretrain=None, progress=False, **settings)
    first = {r["id"]: r for r in _jsonl(out / "qa_answers.jsonl")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        other = ContextCompressor(cc.target, make_tiny_icformer(cc.target, seed=5), cc.icae, max_context_tokens=2048)
    counter = CountingGenerate(monkeypatch)
    run_evaluation(other, out, data_dir=data_dir, no_pretrain=None, progress=False, **settings)
    assert counter.calls == 2 * 2 + 2  # icformer and icformer-swapped per question, icformer's window twice
    second = {r["id"]: r for r in _jsonl(out / "qa_answers.jsonl")}
    kept = {i for i in first if i in second and first[i] == second[i]}
    assert {first[i]["variant"] for i in kept} == {"full", "none", "icae", "icae-swapped"}
    assert len(list((out / ".cache").glob("qa_answers.*.jsonl"))) == 2  # the old IC-Former's rows, per key


def test_the_floors_read_nothing_and_another_context(cc, data_dir, tmp_path):
    """`none` reads no context; `<method>-swapped` reads the vectors of another context of the same task."""
    out = tmp_path / "results"
    run_evaluation(cc, out, data_dir=data_dir, no_pretrain=None, progress=False,
                   **dict(SMALL, sections=("qa",), qa_samples=4, max_new_tokens=4, batch_size=1))
    samples = {s["id"]: s for s in _jsonl(out / "qa_samples.jsonl")}
    questions = {r["id"]: r for r in _jsonl(data_dir / "eval.jsonl")}
    for sample in samples.values():
        partner = questions[sample["partner"]]
        assert partner["task"] == sample["dataset"] and partner["input"] != sample["context"]
        # All made-up questions are worded alike, so swapped answers are those of the partner's own
        # context, and `none` is one answer for all.
        if sample["partner"] in samples:
            assert sample["answers"]["icformer-swapped"]["text"] == samples[sample["partner"]]["answers"]["icformer"][
                "text"]
    assert len({s["answers"]["none"]["text"] for s in samples.values()}) == 1


def test_batched_decoding_matches_answer_and_reconstruct(cc):
    """generate_batch builds the prompts ContextCompressor builds: same greedy tokens, padded or not."""
    from icformer.compressor import encode
    from icformer.prompts import question_layout, reconstruction_layout

    rng = random.Random(3)
    contexts = [" ".join(_sentence(rng) for _ in range(n)) for n in (2, 6)]
    question = "What is the keeper's word?"
    for method, model in (("icformer", cc.icformer), ("icae", cc.icae), ("full", None)):
        items = [(model, question_layout(cc.tokenizer, question, task=None if model is None else "FT"),
                  encode(model, cc.target, [cc.tokenize(c)])[0]) for c in contexts]
        batched = evaluate.generate_batch(cc, items, 6)
        for context, (ids, text) in zip(contexts, batched):
            answer = cc.answer(context, question, method=method, max_new_tokens=6)
            assert ids == answer.token_ids and text == answer.text
    items = [(cc.icformer, reconstruction_layout(cc.tokenizer), encode(cc.icformer, cc.target, [cc.tokenize(c)])[0])
             for c in contexts]
    for context, (ids, _) in zip(contexts, evaluate.generate_batch(cc, items, 8)):
        assert ids == cc.reconstruct(context, max_new_tokens=8).token_ids
    for context, (ids, _) in zip(contexts, evaluate.generate_batch(cc, items, 24, no_repeat_ngram=2)):
        assert ids == cc.reconstruct(context, max_new_tokens=24, no_repeat_ngram=2).token_ids
        assert len(set(zip(ids, ids[1:]))) == len(ids) - 1


def test_teacher_forced_answer_ce_is_the_training_loss_per_prompt(cc):
    """teacher_forced_ce scores each prompt as the training objective scores it alone, padding or not."""
    from icformer.compressor import encode
    from icformer.objectives import CompressionObjective, question_example
    from icformer.prompts import question_layout

    rng = random.Random(4)
    contexts = [cc.tokenize(" ".join(_sentence(rng) for _ in range(n))) for n in (1, 5)]
    answers = [cc.tokenizer(a, add_special_tokens=False)["input_ids"] for a in ("the lamp", "a keeper of the rock")]
    for model in (cc.icformer, cc.icae):
        items = [(model, question_layout(cc.tokenizer, "Who?"), encode(model, cc.target, [ids])[0]) for ids in contexts]
        eos = cc.tokenizer.eos_token_id
        batched = decoding.teacher_forced_ce(cc, items, [a + [eos] for a in answers])
        objective = CompressionObjective(model, cc.target).eval()
        with torch.no_grad():
            alone = [float(objective([question_example(cc.tokenizer, ids, "Who?", a)])[0])
                     for ids, a in zip(contexts, answers)]
        assert batched == pytest.approx(alone, abs=1e-4)
        assert batched[0] != pytest.approx(batched[1], abs=1e-3)  # each row its own, not one row's twice


def test_a_loss_beats_its_floor_by_being_lower():
    """`answer_ce_over_<floor>` is the floor's cross-entropy minus the method's: positive when the
    vectors make the reference answer likelier."""
    from icformer.evaluate.qa import _gains

    mine = [{"answers": {"m": {"answer_ce": 1.0, "f1": 0.5, "rougeL_f": 0.5},
                         "none": {"answer_ce": 3.0, "f1": 0.25, "rougeL_f": 0.25},
                         "m-swapped": {"answer_ce": 2.0, "f1": 0.5, "rougeL_f": 0.5}}}] * 3
    summary: dict = {}
    _gains(summary, "m", mine, resamples=10, seed=0)
    assert summary["answer_ce_over_none"] == pytest.approx(2.0) and summary["answer_ce_over_swapped"] == pytest.approx(1.0)
    assert summary["f1_over_none"] == pytest.approx(0.25) and summary["f1_over_swapped"] == pytest.approx(0.0)


def test_first_line_stops_at_a_line_break(cc):
    """The short-answer protocol keeps an answer's first non-blank line."""
    tokenizer = cc.tokenizer
    stop = decoding.FirstLine(tokenizer)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("\nyes", "yes\nno", "yes no")]
    width = max(map(len, ids))
    batch = torch.tensor([i + [tokenizer.eos_token_id] * (width - len(i)) for i in ids])
    assert stop(batch, None).tolist() == [False, True, False]


def test_benchmark_rows_from_a_bench_run_fill_the_speed_comparison(cc, data_dir, tmp_path):
    bench = tmp_path / "bench.json"
    rows = [{"method": "icformer", "batch_size": 8, "length": 512, "compress_s": 0.05, "speedup_vs_icae": 20.0,
             "total_speedup_vs_full": 2.5},
            {"method": "icae", "batch_size": 8, "length": 512, "compress_s": 1.0, "speedup_vs_icae": 1.0}]
    bench.write_text(json.dumps({"meta": {}, "rows": rows}))
    measured = run_evaluation(cc, tmp_path / "results", data_dir=data_dir, no_pretrain=None, progress=False,
                              **dict(SMALL, sections=("bench",)))
    assert {r["length"] for r in measured["bench"]} == {32}
    result = run_evaluation(cc, tmp_path / "results", data_dir=data_dir, no_pretrain=None, progress=False,
                            bench_from=bench, **dict(SMALL, sections=("bench",)))
    assert len(list((tmp_path / "results" / ".cache" / "bench").glob("evaluate.*.csv"))) == 1  # set aside
    ours = {(r["setting"], r["metric"]): r["ours"] for r in result["tables"]["paper_vs_ours"]}
    assert ours[("IC-Former vs ICAE 8x512", "speedup")] == 20.0
    assert ours[("IC-Former vs full context 8x512", "total_speedup")] == 2.5
    assert ours[("ICAE 8x512", "compress_s")] == 1.0 and ours[("ICAE 8x2048", "compress_s")] is None
    assert result["tables"]["qa_summary"] == []
    copied, problems = load_bench_results(tmp_path / "results" / "bench")
    assert problems == [] and list(copied["compress_s"]) == [0.05, 1.0]


def test_other_committed_benchmark_runs_are_tabled_beside_the_paper(cc, data_dir, tmp_path):
    """A run committed next to the evaluation's own (say, from a GPU) gets its own README table."""
    out = tmp_path / "results"
    measured = run_evaluation(cc, out, data_dir=data_dir, no_pretrain=None, progress=False,
                              **dict(SMALL, sections=("bench",)))
    gpu_rows = [dict(r, batch_size=8, length=512) for r in measured["bench"]]
    (out / "bench" / "gpu-run.json").write_text(json.dumps({"meta": {"device_name": "Some GPU"}, "rows": gpu_rows}))
    (out / "bench" / "notes.json").write_text(json.dumps({"not": "a benchmark"}))
    run_evaluation(cc, out, data_dir=data_dir, no_pretrain=None, progress=False, **dict(SMALL, sections=("bench",)))
    readme = (out / "README.md").read_text()
    assert readme.count("### Also committed") == 1 and "`bench/gpu-run.json`" in readme and "Some GPU" in readme
    assert "| 8 | 512 |" in readme and "| 68 |" in readme.split("### Also committed")[1]  # the paper's 8x512


def test_the_commit_is_read_before_the_run_writes_its_own_outputs(cc, data_dir, tmp_path, monkeypatch):
    """Results written into a tracked folder must not mark the commit they came from as dirty."""
    states = iter([("c0ffee", False)])  # one clean reading; another would find the run's own files
    monkeypatch.setattr(runner, "source_commit", lambda: next(states, ("c0ffee", True)))
    run_evaluation(cc, tmp_path / "results", data_dir=data_dir, no_pretrain=None, progress=False,
                   **dict(SMALL, sections=("bench",)))
    assert json.loads((tmp_path / "results" / "meta.json").read_text())["commit"] == "c0ffee"


def test_source_commit_names_this_checkout():
    commit, dirty = source_commit()
    if (Path(evaluate.__file__).resolve().parents[2] / ".git").exists():
        assert len(commit) == 40 and int(commit, 16) >= 0 and isinstance(dirty, bool)
    else:  # an unpacked copy, not a checkout
        assert (commit, dirty) == (None, None)


def test_randomness_sequences(cc, data_dir):
    text = TextSource(_jsonl(data_dir / "pretrain_valid.jsonl"), cc.tokenizer)
    allowed = allowed_ids(cc.tokenizer, len(cc.tokenizer))
    seqs = {kind: randomness_ids(kind, 20, random.Random("7"), text, allowed) for kind in RANDOMNESS_KINDS}
    assert seqs["reversed"] == seqs["normal"][::-1]
    steps = {allowed.index(b) - allowed.index(a) for a, b in zip(seqs["patterned"], seqs["patterned"][1:])}
    assert steps <= {1, 1 - len(allowed)}
    assert all(len(s) == 20 and set(s) <= set(allowed) for s in seqs.values())
    assert not set(cc.tokenizer.all_special_ids) & set(seqs["random"])


def test_quick_cli_end_to_end(tiny_llm_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "results"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        rc = main(["evaluate", "--llm", str(tiny_llm_dir), "--data-dir", str(data_dir), "--out", str(out),
                   "--quick", "--no-progress", "--icformer-no-pretrain", "none",
                   "--threads", str(torch.get_num_threads())])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert meta["mode"] == "quick" and run["settings"] == json.loads(json.dumps(EvalSettings.quick().__dict__))
    assert meta["trained_by_method"] == {"icformer": False, "icae": False, "full": True}
    res = load_results(out)
    assert res.problems == [] and len(res.samples) == EvalSettings.quick().qa_samples
    assert set(res.reconstruction["method"]) == {"icformer", "icae"}
    bench, problems = load_bench_results(out / "bench")
    assert problems == [] and sorted(set(bench["length"])) == [128, 512]
    assert "wrote" in capsys.readouterr().out


def test_a_run_with_unfinished_samples_is_labelled_partial(cc, data_dir, tmp_path):
    out = tmp_path / "results"
    run_evaluation(cc, out, data_dir=data_dir, no_pretrain=None, progress=False,
                   **dict(SMALL, sections=("qa",), qa_samples=1))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "partial" and set(meta["unfinished"]) == {"reconstruction"}
    assert "> **Partial run.**" in (out / "README.md").read_text()
    run_evaluation(cc, out, data_dir=data_dir, no_pretrain=None, progress=False,
                   **dict(SMALL, sections=("reconstruction", "randomness"), qa_samples=1))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["unfinished"] == {}


def test_an_interrupted_run_says_partial_and_the_next_one_finishes_it(cc, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "results"
    settings = dict(SMALL, sections=("qa",), qa_samples=2, batch_size=2)
    original, calls = decoding.generate_batch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what `run` turns SIGTERM into
        return original(*args, **kwargs)

    monkeypatch.setattr(decoding, "generate_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(cc, out, data_dir=data_dir, no_pretrain=None, progress=False, **settings)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "partial" and meta["unfinished"]["qa"].startswith("2 of 12")
    assert len(_jsonl(out / "qa_answers.jsonl")) == 2
    monkeypatch.setattr(decoding, "generate_batch", original)
    run_evaluation(cc, out, data_dir=data_dir, no_pretrain=None, progress=False,
                   **dict(settings, sections=("qa", "reconstruction", "randomness")))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete" and len(_jsonl(out / "qa_answers.jsonl")) == 12
    assert len(json.loads((out / "run.json").read_text())["earlier_invocations"]) == 1  # other sections count


def test_findings_name_a_compressor_whose_answers_depend_on_its_context_but_not_beyond_none():
    from icformer.evaluate import qa_findings

    row = dict(method="icformer", kind="method", f1=0.06, f1_lo=0.05, f1_hi=0.08, f1_over_none=0.0,
               f1_over_none_lo=-0.01, f1_over_none_hi=0.01, f1_over_swapped=0.01, f1_over_swapped_lo=0.001,
               f1_over_swapped_hi=0.02)
    text = " ".join(qa_findings([row], max_new_tokens=12))
    assert "above its swapped floor but not above `none`" in text and "depend on the context" in text


def test_every_setting_is_a_flag_and_flags_override_only_what_they_name():
    import argparse
    from dataclasses import fields

    from icformer.cli import evaluate as evaluate_cli
    from icformer.cli.args import dataclass_overrides

    parser = argparse.ArgumentParser()
    evaluate_cli.add_arguments(parser, "evaluate")
    flags = {a.dest for a in parser._actions}
    assert {f.name for f in fields(EvalSettings)} <= flags
    args = parser.parse_args(["--sections", "qa", "bench", "--length-buckets", "20", "40", "--no-bench-quick"])
    assert dataclass_overrides(args, EvalSettings) == dict(sections=("qa", "bench"), length_buckets=(20, 40),
                                                          bench_quick=False)


def test_a_table_reads_back_as_written(tmp_path):
    """The schema's writer and reader: CSV cells typed per column, empty cells None, a JSON twin."""
    from icformer.results import MEASUREMENTS, read_table, write_table

    rows = [dict(method="icformer", n=3, f1=0.25, trained=False, note=None),
            dict(method="full", n=4, f1=None, trained=True, note="1x")]
    write_table(tmp_path, "t", rows)
    assert read_table(tmp_path, "t") == rows
    (tmp_path / "t.csv").unlink()
    assert read_table(tmp_path, "t") == rows  # from the JSON twin
    write_table(tmp_path, "m", rows, meta={"device": "cpu"}, fmt=MEASUREMENTS)
    assert (tmp_path / "m.csv").read_bytes().startswith(b"method,n,f1,trained,note\r\n")
    assert json.loads((tmp_path / "m.json").read_text()) == {"meta": {"device": "cpu"}, "rows": rows}
    assert write_table(tmp_path, "t", []) == [] and not (tmp_path / "t.json").exists()
