"""The benchmark's outputs and schema (never its speed: speed targets are checked by running it)."""

import csv
import json
import warnings

import pytest

from icformer import ContextCompressor, UntrainedWarning
from icformer.bench import COLUMNS, QUICK_LENGTHS, run_benchmark, with_icae
from icformer.cli import main

from .conftest import TINY_K, TINY_L, make_tiny_icformer
from .test_icae import make_tiny_icae


def _check_rows(rows: list[dict], lengths, batch_sizes) -> None:
    assert [(r["batch_size"], r["length"], r["method"]) for r in rows] == [
        (b, n, m) for b in batch_sizes for n in lengths for m in ("icformer", "icae", "full")
    ]
    for row in rows:
        assert tuple(row) == COLUMNS
        assert row["prefill_s"] > 0 and row["total_s"] >= row["prefill_s"] and row["memory_bytes"] > 0
        if row["method"] == "full":
            assert row["compress_s"] is row["flops_exact"] is row["speedup_vs_icae"] is None
            continue
        assert row["compress_s"] > 0 and row["flops_measured"] == row["flops_exact"] > 0
        assert row["num_vectors"] == row["num_chunks"] * row["k"]
        assert row["gflops_per_s"] > 0 and row["time_over_flop_bound"] > 0
    icformer = [r for r in rows if r["method"] == "icformer"]
    assert all(r["flops_ratio_vs_icae"] > 1 for r in icformer)  # ICAE always costs more


@pytest.fixture
def cc(tiny_llm_dir):
    icae = make_tiny_icae(tiny_llm_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        return ContextCompressor(icae.target, make_tiny_icformer(icae.target), icae)


def test_run_benchmark_returns_documented_rows(cc):
    rows = run_benchmark(cc, lengths=[TINY_L, 3 * TINY_L + 1], batch_sizes=[1, 2], repeats=1)
    _check_rows(rows, [TINY_L, 3 * TINY_L + 1], [1, 2])
    assert rows[3]["num_chunks"] == 4 and rows[3]["k"] == TINY_K


def test_quick_defaults_and_skipping_large_batches(cc):
    rows = run_benchmark(cc, quick=True, batch_sizes=[1, 4], max_batch_tokens=4 * QUICK_LENGTHS[0])
    assert {(r["batch_size"], r["length"]) for r in rows} == {(1, n) for n in QUICK_LENGTHS} | {(4, QUICK_LENGTHS[0])}
    assert {r["repeats"] for r in rows} == {3}


def test_a_benchmark_needs_an_icae_of_the_same_shape(tiny_compressor, tiny_llm_dir):
    with pytest.raises(ValueError, match="with ICAE"):
        run_benchmark(tiny_compressor, lengths=[8])
    other = make_tiny_icae(tiny_llm_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        mismatched = ContextCompressor(other.target, make_tiny_icformer(other.target, chunk_size=2 * TINY_L), other)
    with pytest.raises(ValueError, match="same k and L"):
        run_benchmark(mismatched, lengths=[8])


def test_with_icae_adds_a_matching_random_icae(tiny_llm_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        plain = ContextCompressor.from_pretrained(str(tiny_llm_dir), device="cpu")
        cc = with_icae(plain)
    assert cc.icae is not None and cc.icae.trained is False and cc.icformer is plain.icformer
    assert (cc.icae.config.k, cc.icae.config.L) == (plain.icformer.config.k, plain.icformer.config.L)
    assert with_icae(cc) is cc


def _check_files(out, lengths) -> None:
    with (out / "bench.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        csv_rows = list(reader)
    results = json.loads((out / "bench.json").read_text())
    for key in ("date", "device", "device_name", "torch", "threads", "git_commit", "llm", "dtype"):
        assert key in results["meta"]
    _check_rows(results["rows"], lengths, [1])
    assert [r["method"] for r in csv_rows] == [r["method"] for r in results["rows"]]
    assert float(csv_rows[0]["compress_s"]) == results["rows"][0]["compress_s"]
    html = (out / "bench.html").read_text()
    assert html.lower().lstrip().startswith(("<!doctype html>", "<html")) and html.rstrip().endswith("</html>")
    assert "plotly" in html and "IC-Former compress" in html


def test_cli_bench_quick_on_the_tiny_model(tiny_llm_dir, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        assert main(["bench", "--llm", str(tiny_llm_dir), "--quick", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "speedup" in table and "t/bound" in table
    _check_files(tmp_path, QUICK_LENGTHS)


def test_cli_bench_json_goes_to_stdout(tiny_llm_dir, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        args = ["bench", "--llm", str(tiny_llm_dir), "--lengths", "20", "--batch-sizes", "1", "--repeats", "1"]
        assert main(args + ["--out", str(tmp_path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "bench.json").read_text())


@pytest.mark.slow
def test_cli_bench_quick_on_the_embedded_default(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWarning)
        assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    for name in ("bench.csv", "bench.json", "bench.html"):
        assert (tmp_path / name).is_file()


def test_a_copy_without_its_own_git_is_told_its_commit(cc, monkeypatch):
    """A lent GPU machine's copy of .git can be stale: ICFORMER_SOURCE_COMMIT names the commit measured."""
    from icformer.bench import SOURCE_COMMIT_ENV, environment

    monkeypatch.delenv(SOURCE_COMMIT_ENV, raising=False)
    assert environment(cc)["git_commit"] != "abc123"
    monkeypatch.setenv(SOURCE_COMMIT_ENV, "abc123-dirty")
    meta = environment(cc)
    assert meta["git_commit"] == "abc123-dirty" and meta["git_dirty"] is None


def test_elapsed_counts_the_call_and_only_the_call():
    import time

    from icformer.timing import elapsed

    calls = []
    seconds = elapsed("cpu", lambda: (calls.append(1), time.sleep(0.02)))
    assert calls == [1] and 0.02 <= seconds < 1.0


def test_batch_one_rows_report_each_methods_decode_speed(cc):
    rows = run_benchmark(cc, lengths=[TINY_L], batch_sizes=[1, 2], repeats=1, decode_tokens=3)
    speeds = {(r["batch_size"], r["method"]): r["decode_tokens_per_s"] for r in rows}
    assert all(speeds[(1, m)] > 0 for m in ("icformer", "icae", "full"))
    assert all(speeds[(2, m)] is None for m in ("icformer", "icae", "full"))  # decoded at batch 1 only
    assert all(r["decode_tokens_per_s"] is None for r in run_benchmark(cc, lengths=[TINY_L], repeats=1, decode_tokens=0))
