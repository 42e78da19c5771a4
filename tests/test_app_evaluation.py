"""The Evaluation tab and the Compress & Ask note read the committed results honestly (no server, no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from app import build_demo, charts, presentation, results
from app.tabs import EvaluationTab, Shared
from app.service import ModelService

LABELS = ["icformer", "icae", "full", "none", "icformer-swapped", "icae-swapped"]
KIND = {m: "floor" if m == "none" or m.endswith("-swapped") else "method" for m in LABELS}


def _summary(f1: dict[str, float], gain_low: float) -> pd.DataFrame:
    """qa_summary rows as `python -m icformer evaluate` writes them: means, intervals, gains over the floors."""
    rows = []
    for m in LABELS:
        row = dict(method=m, dataset="all", kind=KIND[m], n=300, f1=f1[m], f1_lo=f1[m] - 0.02, f1_hi=f1[m] + 0.02,
                   exact_match=f1[m] / 4, exact_match_lo=0.0, exact_match_hi=f1[m] / 2, rougeL_f=f1[m],
                   rougeL_f_lo=f1[m] - 0.02, rougeL_f_hi=f1[m] + 0.02)
        if KIND[m] == "method":
            for floor in ("none", "swapped"):
                gain = f1[m] - f1.get(f"{m}-swapped" if floor == "swapped" else "none", f1["none"])
                row.update({f"f1_over_{floor}": gain, f"f1_over_{floor}_lo": gain_low,
                            f"f1_over_{floor}_hi": gain + 0.03})
        rows.append(row)
    return pd.DataFrame(rows)


NEAR = dict(icformer=0.061, icae=0.072, full=0.144, none=0.058, **{"icformer-swapped": 0.060, "icae-swapped": 0.070})


def _write(root: Path, summary: pd.DataFrame) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    summary.to_csv(root / "qa_summary.csv", index=False)
    by_task = pd.concat([summary.assign(dataset=d) for d in ("disfl_qa", "multirc", "quoref")])
    by_task.to_csv(root / "qa_by_task.csv", index=False)
    (root / "reconstruction_by_length.csv").write_text(
        "method,length_bucket,bleu,bleu_lo,bleu_hi,ce_gap,ce_gap_lo,ce_gap_hi,n\n"
        + "".join(f"{m},{b},{v:.3f},{v - 0.004:.3f},{v + 0.006:.3f},{10 * v:.3f},{10 * v - 0.05:.3f},{10 * v + 0.05:.3f},30\n"
                  for m, v0 in (("icformer", 0.012), ("icae", 0.02)) for b, v in zip((100, 300, 500), (v0, v0 / 2, 0.003))))
    (root / "meta.json").write_text(json.dumps({
        "llm": "/root/.cache/icformer/SmolLM2-135M-Instruct", "device": "cpu", "machine": "AMD EPYC, 2 CPU cores",
        "date": "2026-12-01", "commit": "abc123", "trained_by_method": {"icformer": True, "icae": True, "full": True},
        "command": "python -m icformer evaluate --out /work/main/assets/results"}))
    answers = {m: {"text": f"{m} guess", "f1": NEAR[m], "exact_match": 0.0, "rougeL_f": NEAR[m], "kind": KIND[m],
                   "answer_ce": 2.0 + NEAR[m]}
               for m in LABELS}
    with open(root / "qa_samples.jsonl", "w") as handle:
        for i in range(3):
            handle.write(json.dumps({"id": f"disfl_qa/{i}", "dataset": "disfl_qa", "context": "A long context.",
                                     "question": "Which year, with a question long enough to need clipping in a "
                                                 "narrow table column of the browser?",
                                     "reference": "1912", "answers": answers}) + "\n")
    return root


def _tab(root: Path) -> EvaluationTab:
    return EvaluationTab(Shared(ModelService(lambda: None), [], root))


def test_the_compress_and_ask_tab_says_when_compressors_score_at_their_floors(tmp_path):
    near = _write(tmp_path / "near", _summary(NEAR, gain_low=-0.02))
    note = presentation.floor_note_html(results.load_results(near))
    assert "barely read the context" in note
    assert "IC-Former F1 0.061 [0.041, 0.081]" in note and "ICAE F1 0.072" in note
    assert "full context F1 0.144" in note and "question alone 0.058" in note

    demo = build_demo(lambda: None, results_dir=near, preload=False, warm_up=False)
    shown = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "icf-floor-note")
    assert "barely read the context" in shown.value

    read = _write(tmp_path / "read", _summary(dict(NEAR, icformer=0.13, icae=0.13), gain_low=0.01))
    assert presentation.floor_note_html(results.load_results(read)) == ""  # dropped once they beat their floors


def test_qa_chart_scales_to_the_data_with_intervals_and_separate_labels(tmp_path):
    res = results.load_results(_write(tmp_path / "r", _summary(NEAR, gain_low=-0.02)))
    fig = charts.qa_metrics_figure(res.qa_summary)
    bars = [t for t in fig.data if t.type == "bar"]
    assert bars and all(t.error_x.visible and max(t.error_x.array) > 0 for t in bars)
    top = fig.layout.xaxis.range[1]
    assert 0.164 <= top < 0.5  # the largest interval end (0.164) fits; not a fixed 0-1 axis
    assert all(fig.layout[f"xaxis{i}"].range[1] == top for i in ("", 2, 3))
    texts = [t for t in fig.data if t.type == "scatter" and t.mode == "text"]
    assert len(texts) == len(bars)
    for bar, labels in zip(bars, texts):
        assert len(set(labels.y)) == len(labels.y) == len(bar.y)  # one value label per bar row: none share a line
        # Each label starts past its bar's interval, so the error bar does not run through it.
        assert all(x == pytest.approx(v + plus) for x, v, plus in zip(labels.x, bar.x, bar.error_x.array))
    floors = [p for t in bars for p in t.marker.pattern.shape]
    assert floors.count("/") == 3 * 3  # the three floors, hatched in each of the three panels


def test_bleu_chart_scales_to_the_data_with_intervals(tmp_path):
    res = results.load_results(_write(tmp_path / "r", _summary(NEAR, gain_low=-0.02)))
    fig = charts.reconstruction_length_figure(res.reconstruction)
    assert all(t.error_y.visible for t in fig.data)
    assert 0.026 <= fig.layout.yaxis.range[1] < 0.1  # BLEU of at most 0.026 does not lie flat on a 0-1 axis
    gaps = [t for t in fig.data if t.xaxis == "x2"]  # the swap gap beside it, one line per method
    assert gaps and len(gaps) == len(fig.data) / 2 and not any(t.showlegend for t in gaps)
    frame = res.reconstruction.drop(columns=[c for c in res.reconstruction.columns if c.startswith("ce_gap")])
    assert {t.xaxis for t in charts.reconstruction_length_figure(frame).data} == {"x"}  # older results: BLEU alone
    assert not any(t.line.dash == "dash" for t in fig.data)  # results without the n-gram-blocked decoding
    blocked = res.reconstruction.assign(bleu_no_repeat=0.08, bleu_no_repeat_lo=0.06, bleu_no_repeat_hi=0.1)
    fig = charts.reconstruction_length_figure(blocked)
    dashed = [t for t in fig.data if t.line.dash == "dash"]
    assert len(dashed) == 2 and {t.xaxis for t in dashed} == {"x"} and all(t.showlegend for t in dashed)
    assert fig.layout.yaxis.range[1] >= 0.1  # the axis holds the blocked decoding's intervals too


def test_the_run_banner_is_a_small_table_without_machine_paths(tmp_path):
    root = _write(tmp_path / "results-dir", _summary(NEAR, gain_low=-0.02))
    status = _tab(root).dashboard("All").eval_status
    assert "<table" in status and "trained_by_method" not in status and "{" not in status
    assert "/root/" not in status and str(root) not in status and "/work/main" not in status
    assert "SmolLM2-135M-Instruct" in status and "IC-Former: yes" in status


def test_sample_browser_fits_its_columns_and_shows_every_answer_with_the_floors(tmp_path):
    root = _write(tmp_path / "r", _summary(NEAR, gain_low=-0.02))
    found = _tab(root).samples("All", "All", "f1", 0.0, 1.0)
    table, ids = found.s_table, found.s_id
    assert list(table.columns[:3]) == ["id", "question", "reference"]
    assert {"IC-F", "ICAE", "full", "none", "IC-F gain", "ICAE gain"} <= set(table.columns)
    assert max(len(c) for c in table.columns) <= 10  # short headers: one line, the scores within the window
    assert table["IC-F gain"].iloc[0] == pytest.approx(NEAR["icformer"] - max(NEAR["none"], NEAR["icformer-swapped"]),
                                                       abs=0.01)
    assert all(len(q) <= 44 for q in table["question"]) and len(table.columns) <= 10

    html = presentation.sample_answers_html(results.find_sample(results.load_results(root), ids["value"]))
    assert "1912" in html  # the reference
    for m in ("IC-Former", "ICAE", "Full context", "none (floor)", "icformer-swapped (floor)"):
        assert m in html
    assert "+0.00" in html or "+0.01" in html  # IC-Former's F1 gain over the better floor
    assert f"<td>{2.0 + NEAR['icae']:.2f}</td>" in html  # each answer's teacher-forced cross-entropy


def test_the_by_task_table_scrolls_instead_of_running_off_the_page(tmp_path):
    res = results.load_results(_write(tmp_path / "r", _summary(NEAR, gain_low=-0.02)))
    html = presentation.extra_tables_html(res)
    assert "<h4>qa_by_task</h4><div class='icf-scroll' style='overflow-x:auto" in html
    header = html.split("<thead>")[1].split("</thead>")[0]
    assert header.count("<th") <= 11 and "f1_lo" not in header and "0.061 [0.041, 0.081]" in html
