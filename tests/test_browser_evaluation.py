"""The Evaluation tab and the Compress & Ask note in headless Chromium at a 1400-px window (no model needed).

Needs Debian's chromium at /usr/bin/chromium, as tests/test_browser.py does.
"""

from __future__ import annotations

import os

import pytest

from app import build_demo

from .test_app import launch
from .test_app_evaluation import LABELS, NEAR, _summary, _write
from .test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    results = _write(tmp_path_factory.mktemp("eval-results"), _summary(NEAR, gain_low=-0.02))
    demo = build_demo(lambda: None, results_dir=results, preload=False, warm_up=False)
    url = launch(demo)
    yield url
    demo.close()


def test_evaluation_tab_fits_a_laptop_window(page_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shots = os.environ.get("ICFORMER_SCREENSHOTS") or str(tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(page_url)
            note = page.locator("#icf-floor-note")
            expect(note).to_contain_text("barely read the context")
            expect(note).to_contain_text("IC-Former F1 0.061 [0.041, 0.081]")

            page.get_by_role("tab", name="Evaluation").click()
            expect(page.locator("#icf-eval-status table")).to_contain_text("SmolLM2-135M-Instruct")
            headers = page.locator(".gradio-container table thead tr").filter(has_text="IC-F gain").first
            expect(headers).to_be_visible()
            box = headers.bounding_box()
            assert box["height"] < 60, box  # one line of short headers
            last = headers.locator("th").last.bounding_box()
            assert last["x"] + last["width"] <= 1400, last  # the score columns start and end inside the window
            by_task = page.locator(".icf-scroll").first
            assert by_task.evaluate("e => getComputedStyle(e).overflowX") == "auto"
            assert by_task.bounding_box()["width"] <= 1400
            page.locator("#icf-sample-answers-box").scroll_into_view_if_needed()
            expect(page.locator("#icf-sample-answers")).to_contain_text("none (floor)")
            for method in LABELS[:3]:
                expect(page.locator("#icf-sample-answers")).to_contain_text(f"{method} guess")
            page.screenshot(path=os.path.join(shots, "evaluation-1400.png"), full_page=True)
        finally:
            browser.close()
