"""The app in a real browser (Debian's headless Chromium driven by Playwright; no browser download):
create a profile, upload a composite clip, wait for the results (probability chart, transcript),
label the clip in the Label tab with a keyboard shortcut, rebuild the cache and see the snapshot
count change. Screenshots of each tab go to tests/screenshots/."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from ui_helpers import PREDICT_TIMEOUT_S, SCREENSHOTS, RunningApp, shared_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
XSS_NOTE = '<img src=x onerror="window.__emowebXss=1"><b>bold?</b>'
XSS_PROFILE = 'browser-family <i>x</i><img src=x onerror="window.__emowebXss=2">'  # a name is shown in many places

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="session")
def ui_app(request, tmp_path_factory) -> RunningApp:
    return shared_app(request, tmp_path_factory)


@pytest.fixture()
def page():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (requirements-dev.txt) is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(60_000)
            pg = context.new_page()
            pg.errors = []  # type: ignore[attr-defined]
            pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))  # type: ignore[attr-defined]
            yield pg
        finally:
            browser.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True, timeout=60_000)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def test_browser_predict_label_rebuild(page, ui_app: RunningApp, composite_clip: Path):  # page first: skips before the app starts
    from playwright.sync_api import expect

    page.goto(ui_app.url, wait_until="domcontentloaded", timeout=120_000)
    expect(page.locator("#create-profile")).to_be_visible(timeout=120_000)

    # a profile for this session
    page.locator("#new-profile textarea, #new-profile input").first.fill(XSS_PROFILE)
    page.locator("#create-profile").click()
    expect(page.locator("#profile-status")).to_contain_text(f"Created profile {XSS_PROFILE}", timeout=60_000)

    # Predict: upload the composite clip and wait for the results
    page.locator("#predict-video input[type=file]").set_input_files(str(composite_clip))
    expect(page.locator("#predict-video video")).to_have_count(1, timeout=60_000)
    page.locator("#predict-run").click()
    expect(page.locator("#predict-summary")).to_contain_text("Clip #", timeout=PREDICT_TIMEOUT_S * 1000)
    expect(page.locator("#prob-chart .js-plotly-plot")).to_be_visible(timeout=60_000)
    expect(page.locator("#prob-chart")).to_contain_text("probability")
    expect(page.locator("#transcript")).to_contain_text(re.compile("door", re.I))
    expect(page.locator("#timeline .js-plotly-plot")).to_be_visible()
    expect(page.locator("#frames img").first).to_be_visible()
    clip_id = re.search(r"Clip #(\d+)", page.locator("#predict-summary").inner_text()).group(1)
    page.wait_for_timeout(1000)  # let plotly finish drawing before the screenshot
    shot(page, "predict")

    # Label: the clip is in the queue; type a note (an HTML payload: must show as text) and press "4" (joy)
    open_tab(page, "Label")
    expect(page.locator("#queue")).to_contain_text("joy_kids_door", timeout=60_000)
    expect(page.locator("#label-btn-4")).to_contain_text("joy", timeout=60_000)
    expect(page.locator("#label-answers")).to_contain_text(f"Clip #{clip_id}", timeout=60_000)
    before = page.locator("#snapshot-count").inner_text()
    assert re.search(r": 0 \(", before), before
    page.locator("#label-note textarea").fill(XSS_NOTE)
    page.locator("#label-answers").click()  # focus off the text box: the shortcut keys apply
    page.keyboard.press("4")
    expect(page.locator("#label-status")).to_contain_text(f"Clip #{clip_id} labelled joy", timeout=60_000)
    expect(page.locator("#label-status")).to_contain_text("<img src=x")  # shown as text, not markup
    expect(page.locator("#label-history")).to_contain_text("onerror", timeout=60_000)
    expect(page.locator("#queue")).to_contain_text("joy", timeout=60_000)
    assert page.evaluate("window.__emowebXss") is None, "a note's or profile name's HTML ran in the page"

    # Rebuild the cache: the snapshot count changes
    page.locator("#rebuild").click()
    expect(page.locator("#rebuild-result")).to_contain_text("snapshots 0 →", timeout=300_000)
    expect(page.locator("#snapshot-count")).not_to_have_text(before, timeout=60_000)
    after = page.locator("#snapshot-count").inner_text()
    assert re.search(r": [1-9]\d* \(", after), after
    expect(page.locator("#rebuild-chart .js-plotly-plot")).to_be_visible()
    page.wait_for_timeout(1000)
    shot(page, "label")

    # Compare: the profile's labelled clips (no new encoding), with a confusion matrix per model
    open_tab(page, "Compare")
    page.locator("#compare-set").click()
    expect(page.locator("#compare-set-result")).to_contain_text("labelled clip", timeout=120_000)
    expect(page.locator("#confusion-chart .js-plotly-plot")).to_be_visible()
    page.wait_for_timeout(1000)
    shot(page, "compare")

    # Models: weights, cards, the profile's label set and cache snapshots
    open_tab(page, "Models")
    page.locator("#models-refresh").click()
    expect(page.locator("#models-table")).to_contain_text("emoasst", timeout=60_000)
    expect(page.locator("#cache-table")).to_contain_text("emoasst", timeout=60_000)
    shot(page, "models")

    assert page.evaluate("window.__emowebXss") is None
    assert not getattr(page, "errors", []), page.errors
