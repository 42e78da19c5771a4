"""The real page in headless Chromium: paste, compress, ask, see three answers, the attention heatmap,
the Evaluation tab.

Runs on the tiny test model (the page and its wiring are under test, not answer quality) with a
synthetic results directory. Needs Debian's chromium at /usr/bin/chromium (CI installs it; this
test fails, rather than skips, without it). Screenshots go to $ICFORMER_SCREENSHOTS or a tmp dir.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from app import build_demo

from .test_app import STORY, launch, tiny_factory, write_synthetic_results

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LONG_TEXT = " ".join(f"Line {i}: the keeper logged the weather and the boats." for i in range(30))

CHROMIUM = os.environ.get("ICFORMER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def page_url(tiny_llm_dir, tmp_path_factory):
    results = write_synthetic_results(tmp_path_factory.mktemp("browser-results"))
    # 20 ms per LLM forward pass: a reconstruction runs long enough to watch it stream and stop it.
    demo = build_demo(tiny_factory(tiny_llm_dir, step_delay_s=0.02), results_dir=results, max_context_tokens=2048)
    url = launch(demo)
    yield url
    demo.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("ICFORMER_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_compress_ask_and_evaluation_in_chromium(page_url, shots):
    assert Path(CHROMIUM).is_file() or shutil.which(CHROMIUM), (
        f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium`"
    )
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(page_url)

            expect(page.locator("#icf-status")).to_contain_text("Ready", timeout=TIMEOUT_MS)
            expect(page.locator("#icf-status")).to_contain_text("Untrained compressor")

            page.locator("#icf-context textarea").fill(STORY)
            page.locator("#icf-compress").click()
            headline = page.locator("#icf-headline")
            expect(headline).to_contain_text("tokens")
            expect(headline.locator(".icf-speedup")).to_be_visible()
            table = page.locator("#icf-comp-table")
            expect(table).to_contain_text("IC-Former")
            expect(table).to_contain_text("ICAE")
            expect(table).to_contain_text("ms")  # each method's compression time
            expect(page.locator("#icf-compress")).to_be_enabled()

            page.locator("#icf-question textarea").fill("What is the cat called?")
            page.locator("#icf-ask").click()
            for method in ("icformer", "icae", "full"):
                card = page.locator(f"#icf-card-{method}")
                expect(card).to_contain_text("prefill")
                expect(card).to_contain_text("tokens/s")
                expect(page.locator(f"#icf-answer-{method} textarea")).not_to_have_value("")
            expect(page.locator("#icf-ask-headline")).to_contain_text("full context")
            for button in ("#icf-compress", "#icf-ask"):  # re-enabled after the run
                expect(page.locator(button)).to_be_enabled()
            page.screenshot(path=str(shots / "compress_and_ask.png"), full_page=True)

            expect(page.locator("#icf-ask-headline")).to_contain_text("first token")

            # Bad input: a clear message, no traceback, the buttons come back, and the previous result and its
            # download are gone rather than shown under the error.
            expect(page.locator("#icf-download-icformer")).to_be_visible()
            page.locator("#icf-context textarea").fill("   ")
            page.locator("#icf-compress").click()
            expect(page.get_by_text("The context is empty").first).to_be_visible()
            expect(page.locator("#icf-compress")).to_be_enabled()
            expect(page.locator("#icf-download-icformer")).to_be_hidden()
            expect(page.locator("#icf-headline")).not_to_contain_text("tokens")
            assert "Traceback" not in page.content()

            # Reconstruct streams, shows one progress bar, and Stop keeps what was decoded.
            page.locator("#icf-context textarea").fill(LONG_TEXT)
            page.get_by_role("tab", name="Reconstruct").click()
            page.locator("#icf-reconstruct").click()
            expect(page.locator("#icf-rec-stats")).to_contain_text("Decoding:")
            expect(page.locator("#icf-diff")).not_to_have_text("", timeout=TIMEOUT_MS)
            assert page.locator(".progress-text:visible").count() <= 1
            page.screenshot(path=str(shots / "reconstruct_streaming.png"), full_page=True)
            page.locator("#icf-rec-stop").click()
            expect(page.locator("#icf-rec-stats")).to_contain_text("Stopped after")
            expect(page.locator("#icf-rec-stats")).to_contain_text("BLEU")
            expect(page.locator("#icf-reconstruct")).to_be_enabled()
            expect(page.locator("#icf-rec-stop")).to_be_disabled()
            # The diff wraps between words, never inside one.
            assert page.locator("#icf-diff .textfield").evaluate("e => getComputedStyle(e).wordBreak") == "normal"
            page.screenshot(path=str(shots / "reconstruct_stopped.png"), full_page=True)
            page.get_by_role("tab", name="Compress & Ask").click()

            # Reconstruct tab: IC-Former's attention heatmap over the context's first chunk.
            page.locator("#icf-context textarea").fill(STORY)
            page.get_by_role("tab", name="Reconstruct").click()
            page.get_by_text("Where the digests look").click()
            page.locator("#icf-attention").click()
            expect(page.locator("#icf-attention-plot .js-plotly-plot").first).to_be_visible()
            expect(page.locator("#icf-attention-stats")).to_contain_text("5-token window")
            page.screenshot(path=str(shots / "attention.png"), full_page=True)

            # Speed tab: committed runs, each batch x length beside the paper's Table 1.
            page.get_by_role("tab", name="Speed").click()
            runs = page.locator("#icf-bench-runs")
            expect(runs).to_contain_text("Test H200")
            expect(runs).to_contain_text("(paper 68×)")

            page.get_by_role("tab", name="Evaluation").click()
            qa_plot = page.locator("#icf-qa-plot")
            expect(qa_plot.locator(".js-plotly-plot").first).to_be_visible()
            expect(qa_plot).to_contain_text("ROUGE-L")
            expect(page.locator("#icf-bleu-plot .js-plotly-plot").first).to_be_visible()
            expect(page.locator("#icf-eval-status")).to_contain_text("tiny")
            page.screenshot(path=str(shots / "evaluation.png"), full_page=True)

            page.get_by_role("tab", name="About").click()
            expect(page.locator("svg.icf-diagram")).to_be_visible()
            page.screenshot(path=str(shots / "about.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert (shots / "compress_and_ask.png").stat().st_size > 10_000
