"""The app in a real browser (Debian's headless Chromium driven by Playwright; no browser download).

Desktop: create a profile, upload a composite clip; the answer comes first (one label, how sure in
words, the face, what was heard, whether the profile's examples were used), then a compact table of
the models, with every plot in a fold; honest attention readings; label the clip with a keyboard
shortcut in the Label tab (no margins or snapshots on its main view), rebuild the cache.
Phone (390 px wide): the same Predict and Label tabs fit the width and the label buttons are in reach.
Recording: Chromium's fake webcam and microphone play a composite clip (y4m + wav); the recording is
analysed, stored in a profile and labelled.

Screenshots go to a temp dir; `EMOWEB_REFRESH_SCREENSHOTS=1` writes them to tests/screenshots/ (the
README's images) instead.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import ffmpeg
from ui_helpers import PREDICT_TIMEOUT_S, SCREENSHOTS, RunningApp, shared_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
XSS_NOTE = '<img src=x onerror="window.__emowebXss=1"><b>bold?</b>'
XSS_PROFILE = 'browser-family <i>x</i><img src=x onerror="window.__emowebXss=2">'  # a name is shown in many places
DESKTOP = {"viewport": {"width": 1400, "height": 1000}}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 1, "is_mobile": True, "has_touch": True}
MODELS = ("EmoAsst", "MER-CLIP", "MER-SEM-MBT", "Foal-Net")  # as people read them
CODE_WORDS = re.compile(r"\b(emoasst|merclip|sem_mbt|foalnet)\b|(?i:cosine)|_to_")  # never shown outside the raw JSON
CONFIDENCE = re.compile(r"fairly sure|probably|not sure")
DEVELOPER_WORDS = re.compile(r"composite|share=True|public link", re.I)
EXPERT_WORDS = re.compile(r"margin|disputed|alpha|beta|snapshot", re.I)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="session")
def ui_app(request, tmp_path_factory) -> RunningApp:
    return shared_app(request, tmp_path_factory)


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    """Where screenshots go: a temp dir, or the README's images with EMOWEB_REFRESH_SCREENSHOTS=1."""
    return SCREENSHOTS if os.environ.get("EMOWEB_REFRESH_SCREENSHOTS") == "1" else tmp_path_factory.mktemp("screenshots")


def browser_page(context_args: dict, extra_args: tuple[str, ...] = ()):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (requirements-dev.txt) is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_ARGS, *extra_args],
                                     timeout=60_000)
        try:
            context = browser.new_context(**context_args)
            context.set_default_timeout(60_000)
            pg = context.new_page()
            pg.errors = []  # type: ignore[attr-defined]
            pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))  # type: ignore[attr-defined]
            yield pg
        finally:
            browser.close()


@pytest.fixture()
def page():
    yield from browser_page(DESKTOP)


@pytest.fixture()
def phone():
    yield from browser_page(PHONE)


@pytest.fixture()
def recording_page(composite_clip: Path, tmp_path: Path):
    """A desktop page whose webcam and microphone are Chromium's fake devices playing the composite clip."""
    y4m, wav = tmp_path / "camera.y4m", tmp_path / "microphone.wav"
    ffmpeg("-i", composite_clip, "-an", "-pix_fmt", "yuv420p", "-r", "15", "-vf", "scale=320:240", y4m)
    ffmpeg("-i", composite_clip, "-vn", "-ac", "1", "-ar", "48000", "-c:a", "pcm_s16le", wav)
    yield from browser_page(DESKTOP, ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                                      f"--use-file-for-fake-video-capture={y4m}", f"--use-file-for-fake-audio-capture={wav}"))


def shot(page, folder: Path, name: str) -> None:
    """A full-page screenshot, reduced to 256 colours (small enough to commit)."""
    from PIL import Image

    path = folder / f"{name}.png"
    page.wait_for_timeout(800)  # let plotly finish drawing
    page.screenshot(path=str(path), full_page=True, timeout=60_000)
    with Image.open(path) as img:
        img.convert("RGB").quantize(colors=256).save(path, optimize=True)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def open_fold(page, elem_id: str) -> None:
    """Open a folded section (gr.Accordion) by clicking its title."""
    page.locator(f"#{elem_id}").locator("button").first.click()


def start(page, url: str) -> None:
    from playwright.sync_api import expect

    page.goto(url, wait_until="domcontentloaded", timeout=120_000)
    expect(page.locator("#profile")).to_be_visible(timeout=120_000)


def new_profile(page, name: str) -> str:
    """Create a profile through the "New profile" fold; its id."""
    from playwright.sync_api import expect

    open_fold(page, "new-profile-box")
    page.locator("#new-profile textarea, #new-profile input").first.fill(name)
    page.locator("#create-profile").click()
    expect(page.locator("#profile-status")).to_contain_text(f"Created profile {name}", timeout=60_000)
    return re.search(r"id (\d+)", page.locator("#profile-status").inner_text()).group(1)


def analyse(page) -> str:
    """Press Analyse and wait for the answer; the stored clip's id."""
    from playwright.sync_api import expect

    page.locator("#predict-run").click()
    expect(page.locator("#predict-summary")).to_contain_text("clip #", timeout=PREDICT_TIMEOUT_S * 1000)
    return re.search(r"clip #(\d+)", page.locator("#predict-summary").inner_text()).group(1)


def check_answer_first(page) -> None:
    """One answer in large type with how sure in words, who, what was heard, the models' table."""
    from playwright.sync_api import expect

    expect(page.locator("#predict-summary .emoweb-answer")).to_be_visible()
    expect(page.locator("#predict-summary .emoweb-answer")).to_contain_text(CONFIDENCE)
    summary = page.locator("#predict-summary").inner_text()
    assert re.search(r"Heard: .*tomorrow", summary, re.I | re.S) and "Who:" in summary and "labelled examples" in summary, summary
    expect(page.locator("#predict-face img")).to_be_visible()
    for m in MODELS:
        expect(page.locator("#predict-models")).to_contain_text(m)


def test_browser_predict_label_rebuild(page, ui_app: RunningApp, composite_clip: Path, shots: Path):  # page first: skips before the app starts
    from playwright.sync_api import expect

    start(page, ui_app.url)
    new_profile(page, XSS_PROFILE)

    # First screen: the three kinds of input are visible choices; no developer remarks
    for kind in ("Video", "Audio only", "Image only"):
        expect(page.locator("#predict-kind").get_by_text(kind, exact=True)).to_be_visible()
    assert not DEVELOPER_WORDS.search(page.locator("body").inner_text())
    page.locator("#predict-video input[type=file]").set_input_files(str(composite_clip))
    expect(page.locator("#predict-video video")).to_have_count(1, timeout=60_000)
    expect(page.locator("#predict-run")).to_be_in_viewport(ratio=1)  # Analyse stays in view after choosing a video

    # One answer first, then the table; everything else folded; warnings apart from information
    clip_id = analyse(page)
    check_answer_first(page)
    expect(page.locator("#prob-chart")).to_be_hidden()  # details on request
    shot(page, shots, "predict")
    open_fold(page, "predict-how")
    expect(page.locator("#predict-how")).to_contain_text("votes for its own top label")
    open_fold(page, "fold-info")
    expect(page.locator("#predict-info")).to_contain_text("fusion order")  # how a model fuses: information
    if page.locator("#predict-warnings").is_visible():
        assert "fusion order" not in page.locator("#predict-warnings").inner_text()
    open_fold(page, "fold-attention")
    expect(page.locator("#attention-chart .js-plotly-plot")).to_be_visible(timeout=60_000)
    expect(page.locator("#attention-chart")).to_contain_text(re.compile(r"weighed all \d+ \w|focused on"))
    # titles come in lines a phone holds (plotly draws each as its own text: no space where a line breaks)
    squeezed = re.sub(r"\s", "", page.locator("#attention-chart").text_content())
    assert re.sub(r"\s", "", "EmoAsst: Which moments of the video this model looked at most") in squeezed
    open_fold(page, "fold-similar")
    expect(page.locator("#similarity-chart .js-plotly-plot")).to_be_visible(timeout=60_000)
    for shown in ("#predict-models", "#predict-info", "#attention-chart", "#similarity-chart"):
        assert not CODE_WORDS.search(page.locator(shown).text_content()), page.locator(shown).text_content()
    open_fold(page, "fold-probs")
    expect(page.locator("#prob-chart .js-plotly-plot")).to_be_visible(timeout=60_000)
    open_fold(page, "fold-frames")
    expect(page.locator("#transcript")).to_contain_text(re.compile("tomorrow", re.I))
    expect(page.locator("#timeline .js-plotly-plot")).to_be_visible()
    expect(page.locator("#frames img").first).to_be_visible()
    for gallery in ("#frames", "#crops"):  # whole pictures: a cropped thumbnail can cut off the face or its box
        assert page.locator(f"{gallery} img").first.evaluate("img => getComputedStyle(img).objectFit") == "contain", gallery

    # Label: buttons in view, no expert words on the main view; label with the key "4" (joy) and a note
    # holding an HTML payload (must show as text, once: in the history)
    open_tab(page, "Label")
    expect(page.locator("#label-btn-4")).to_contain_text("joy", timeout=60_000)
    expect(page.locator("#label-answers")).to_contain_text(f"Clip #{clip_id}", timeout=60_000)
    expect(page.locator("#label-answers")).to_contain_text(CONFIDENCE)
    page.evaluate("window.scrollTo(0, 0)")
    for i in (1, 7):  # every label button visible without scrolling
        expect(page.locator(f"#label-btn-{i}")).to_be_in_viewport(ratio=1)
    main_view = page.locator("#label-tab").inner_text()
    assert not EXPERT_WORDS.search(main_view), main_view
    page.locator("#label-note textarea").fill(XSS_NOTE)
    page.locator("#label-answers").click()  # focus off the text box: the shortcut keys apply
    page.keyboard.press("4")
    expect(page.locator("#label-status")).to_contain_text(f"Clip #{clip_id} labelled joy", timeout=60_000)
    assert "onerror" not in page.locator("#label-status").inner_text()  # the note is shown once: in the history
    open_fold(page, "fold-history")
    expect(page.locator("#label-history")).to_contain_text("<img src=x", timeout=60_000)
    open_fold(page, "fold-queue")
    expect(page.locator("#queue")).to_contain_text("joy_cold", timeout=60_000)
    assert page.evaluate("window.__emowebXss") is None, "a note's or profile name's HTML ran in the page"

    # Rebuild the cache (in its fold): the snapshot count changes
    open_fold(page, "fold-cache")
    before = page.locator("#snapshot-count").inner_text()
    assert re.search(r": 0 \(", before), before
    page.locator("#rebuild").click()
    expect(page.locator("#rebuild-result")).to_contain_text("snapshots 0 →", timeout=300_000)
    expect(page.locator("#snapshot-count")).not_to_have_text(before, timeout=60_000)
    expect(page.locator("#rebuild-chart .js-plotly-plot")).to_be_visible()
    shot(page, shots, "label")

    # Compare: the profile's labelled clips (no new encoding), with a confusion matrix per model
    open_tab(page, "Compare")
    page.locator("#compare-set").click()
    expect(page.locator("#compare-set-result")).to_contain_text("labelled clip", timeout=120_000)
    expect(page.locator("#confusion-chart .js-plotly-plot")).to_be_visible()
    shot(page, shots, "compare")

    # Models: weights, cards, the profile's label set and the snapshots the rebuild just made, shown on
    # opening the tab (no Refresh, no reload)
    open_tab(page, "Models")
    expect(page.locator("#models-table")).to_contain_text("EmoAsst", timeout=60_000)
    expect(page.locator("#cache-table")).to_contain_text("EmoAsst", timeout=60_000)
    for shown in ("#models-info", "#models-table", "#cache-table"):
        assert not CODE_WORDS.search(page.locator(shown).inner_text()), page.locator(shown).inner_text()
    shot(page, shots, "models")

    assert page.evaluate("window.__emowebXss") is None
    assert not getattr(page, "errors", []), page.errors
    assert not DEVELOPER_WORDS.search(ui_app.log_tail(20_000)), ui_app.log_tail()  # no share-link hint in the console


def fits_width(page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["viewport"]["width"] + 1, f"the page is {width} px wide on a 390 px phone"


def test_phone_predict_and_label(phone, ui_app: RunningApp, composite_clip: Path, shots: Path):
    """At 390 px: no sideways scrolling, the answer and Analyse in reach, the label buttons in view."""
    from playwright.sync_api import expect

    start(phone, ui_app.url)
    new_profile(phone, "phone-family")
    # another browser's profile and clip were shown first (one shared family on localhost): switching
    # to the new profile must not report that clip as missing
    phone.wait_for_timeout(3000)
    assert not phone.locator(".toast-body.error").all_inner_texts(), phone.locator(".toast-body.error").all_inner_texts()
    fits_width(phone)
    phone.locator("#predict-video input[type=file]").set_input_files(str(composite_clip))
    expect(phone.locator("#predict-video video")).to_have_count(1, timeout=60_000)
    phone.evaluate("document.querySelector('#predict-kind').scrollIntoView({block: 'start'})")
    expect(phone.locator("#predict-run")).to_be_in_viewport(ratio=1)  # the choice, the clip and Analyse on one screen
    clip_id = analyse(phone)
    phone.wait_for_timeout(500)  # the answer is brought to the top of the screen (it lay below the fold)
    assert -5 <= phone.evaluate("document.getElementById('predict-summary').getBoundingClientRect().top") <= 120
    check_answer_first(phone)
    fits_width(phone)
    shot(phone, shots, "predict-phone")

    open_tab(phone, "Label")
    expect(phone.locator("#label-answers")).to_contain_text(f"Clip #{clip_id}", timeout=60_000)
    expect(phone.locator("#label-btn-7")).to_be_visible()
    phone.evaluate("document.querySelector('#label-clip').scrollIntoView({block: 'start'})")
    for i in (1, 7):  # the clip, then every label button within one screen
        expect(phone.locator(f"#label-btn-{i}")).to_be_in_viewport(ratio=1)
    fits_width(phone)
    phone.locator("#label-btn-4").tap()
    expect(phone.locator("#label-status")).to_contain_text(f"Clip #{clip_id} labelled joy", timeout=60_000)
    shot(phone, shots, "label-phone")
    assert not getattr(phone, "errors", []), phone.errors
    expect(phone.locator(".toast-body.error")).to_have_count(0)


def test_record_with_webcam_and_microphone(recording_page, ui_app: RunningApp):
    """Record through the (fake) webcam and microphone, analyse the recording, store it in a profile, label it."""
    from playwright.sync_api import expect

    page = recording_page
    start(page, ui_app.url)
    new_profile(page, "recording-family")
    video = page.locator("#predict-video")
    video.locator("button[aria-label='Capture from camera']").click()
    video.get_by_text("Click to Access Webcam").click()
    record = video.locator("button.capture-button, button[aria-label='start recording']").first
    expect(record).to_contain_text("Record", timeout=60_000)
    record.click()
    page.wait_for_timeout(4000)  # the clip's sentence is ~3 s
    record.click()  # now "Stop"
    expect(video.locator("video")).to_have_count(1, timeout=60_000)
    expect(page.locator("#predict-run")).to_be_in_viewport()
    clip_id = analyse(page)
    expect(page.locator("#predict-summary .emoweb-answer")).to_contain_text(CONFIDENCE)
    expect(page.locator("#predict-summary")).to_contain_text("Saved as new clip")
    # the fake microphone plays the clip's sentence in a loop: some of its words are heard, the fake camera's face is seen
    expect(page.locator("#predict-summary")).to_contain_text(re.compile(r"Heard: “[^”]*\b(maybe|tomorrow|cold)\b", re.I))
    expect(page.locator("#predict-face img")).to_be_visible()

    open_tab(page, "Label")
    expect(page.locator("#label-answers")).to_contain_text(f"Clip #{clip_id}", timeout=60_000)
    expect(page.locator("#label-answers")).to_contain_text("video")
    # the recording declares no length; the player's copy does (it showed "Infinity" and could not seek)
    length = page.locator("#label-video video").evaluate(
        "v => new Promise(done => v.readyState >= 1 ? done(v.duration) : v.addEventListener('loadedmetadata', () => done(v.duration)))")
    assert 3.0 < length < 6.0, length
    page.locator("#label-btn-4").click()
    expect(page.locator("#label-status")).to_contain_text(f"Clip #{clip_id} labelled joy", timeout=60_000)
    assert not getattr(page, "errors", []), page.errors


def test_a_clip_that_cannot_be_analysed_leaves_no_old_answer(page, ui_app: RunningApp, composite_clip: Path, tmp_path: Path):
    """After an answer, a file that is no media: its one-line error beside the button, the old answer gone
    (not read as the new file's), and no "Error" badge over the emptied answer."""
    from playwright.sync_api import expect

    start(page, ui_app.url)
    page.locator("#predict-video input[type=file]").set_input_files(str(composite_clip))
    expect(page.locator("#predict-video video")).to_have_count(1, timeout=60_000)
    page.locator("#predict-run").click()
    expect(page.locator("#predict-summary")).to_contain_text("Heard:", timeout=PREDICT_TIMEOUT_S * 1000)
    broken = tmp_path / "broken.mp4"
    broken.write_text("this is a text file, not a video\n" * 20, encoding="utf-8")
    page.locator("#predict-video button[aria-label='Clear']").click()  # the loaded clip's own clear button
    page.locator("#predict-video input[type=file]").set_input_files(str(broken))
    page.wait_for_timeout(2000)
    page.locator("#predict-run").click()
    expect(page.locator(".toast-body.error")).to_contain_text("not a media file or corrupt container: broken.mp4", timeout=60_000)
    expect(page.locator("#predict-error")).to_contain_text("not a media file or corrupt container: broken.mp4")
    assert "Heard:" not in page.locator("#predict-summary").inner_text()
    # the error line says it once: no "Error" badge over the emptied answer, the face or the models' table
    assert page.locator(".wrap span.error").count() >= 1  # Gradio drew them (the selector still finds them)...
    expect(page.locator(".wrap span.error:visible")).to_have_count(0)  # ...and none shows

    # a video renamed .jpg in the picture box: gradio reads it before any handler runs; the refusal names it
    renamed = tmp_path / "holiday.jpg"
    renamed.write_bytes(composite_clip.read_bytes())
    page.get_by_label("Image only").check()
    page.locator("#predict-image input[type=file]").set_input_files(str(renamed))
    page.wait_for_timeout(2000)
    page.locator("#predict-run").click()
    expect(page.locator(".toast-body.error").last).to_contain_text("not a picture: holiday.jpg", timeout=60_000)
    expect(page.locator("#predict-error")).to_contain_text("the message in the top corner says why")


# Words of a table's header cells broken across lines: each word of a header must lie on one line (a
# word split by the browser at a narrow width has more than one box).
BROKEN_HEADER_WORDS_JS = """
(selector) => {
  const broken = [];
  for (const th of document.querySelectorAll(selector + ' th')) {
    if (th.offsetParent === null) continue;
    const walker = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.textContent.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const tops = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top)));
        if (tops.size > 1) broken.push(m[0]);
      }
    }
  }
  return broken;
}
"""


def test_phone_table_headers_keep_their_words_whole(phone, ui_app: RunningApp):
    """At 390 px the tables' header words are never split inside a word (the table scrolls sideways instead)."""
    from playwright.sync_api import expect

    start(phone, ui_app.url)
    open_tab(phone, "Models")
    phone.locator("#models-refresh").click()
    expect(phone.locator("#models-table")).to_contain_text(re.compile("emoasst", re.I), timeout=120_000)
    open_tab(phone, "Label")
    open_fold(phone, "fold-queue")
    open_fold(phone, "fold-history")
    expect(phone.locator("#queue th").first).to_be_visible()
    for table in ("#queue", "#label-history"):
        assert phone.evaluate(BROKEN_HEADER_WORDS_JS, table) == [], table
    open_tab(phone, "Models")
    for table in ("#models-table", "#cache-table"):
        assert phone.evaluate(BROKEN_HEADER_WORDS_JS, table) == [], table
    fits_width(phone)


def test_a_failed_action_says_why_in_its_tab_and_leaves_the_checkbox_clickable(page, ui_app: RunningApp):
    """A refused delete: its one line stays beside the Delete button after the toast has gone (not at the top
    of the tab, 900 px above), and no error badge covers the confirmation box (it can still be ticked)."""
    from playwright.sync_api import expect

    start(page, ui_app.url)
    new_profile(page, "error-family")
    open_tab(page, "Label")
    open_fold(page, "fold-delete")
    page.locator("#delete-clip").click()  # the box is not ticked: refused
    refused = "tick the box to confirm deleting the clip"
    expect(page.locator(".toast-body.error")).to_contain_text(refused, timeout=60_000)
    expect(page.locator("#delete-error")).to_contain_text(refused, timeout=60_000)  # beside the button pressed
    page.wait_for_timeout(12_000)  # the toast closes by itself; the line stays
    expect(page.locator("#delete-error")).to_contain_text(refused)
    expect(page.locator("#label-error")).to_have_text("")
    box = page.get_by_label("yes, delete this clip (media, features, labels, cache entries)")
    box.click(timeout=10_000)  # fails when something (an error badge) lies over the box
    expect(box).to_be_checked()

    # the same for the profile bar: a profile without a name is refused; its boxes and the profile choice stay usable
    open_fold(page, "new-profile-box")
    page.locator("#create-profile").click()
    expect(page.locator("#profile-error")).to_contain_text("type a name for the new profile", timeout=60_000)
    page.locator("#new-profile textarea, #new-profile input").first.click(timeout=10_000)
    page.locator("#profile input").first.click(timeout=10_000)


def test_a_labelling_session_moves_to_the_next_clip_and_undo_goes_back(page, ui_app: RunningApp):
    """One tap per clip: after a label the next clip nobody labelled is shown and the line says which;
    Undo takes back the last label given on this page, showing that clip again, then the one before it."""
    from gradio_client import Client, handle_file
    from playwright.sync_api import expect

    from conftest import FACES, VOICES
    from ui_helpers import job_result

    start(page, ui_app.url)
    profile = new_profile(page, "session-family")
    client = Client(ui_app.url, verbose=False, download_files=False)
    for media in (FACES["joy"], FACES["neutral"], VOICES["sadness"]):  # three clips, none labelled
        image, audio = (handle_file(str(media)), None) if media.suffix == ".jpg" else (None, handle_file(str(media)))
        job_result(client.submit(None, audio, image, profile, api_name="/predict"), PREDICT_TIMEOUT_S)
    open_tab(page, "Label")
    answers, status = page.locator("#label-answers"), page.locator("#label-status")
    expect(answers).to_contain_text("not labelled yet", timeout=60_000)
    first = re.search(r"Clip #(\d+)", answers.inner_text()).group(1)
    page.keyboard.press("4")  # joy
    expect(status).to_contain_text(re.compile(rf"Clip #{first} labelled joy\. Next: clip #(\d+), not labelled yet \(2 to go\)"),
                                   timeout=60_000)
    second = re.search(r"Next: clip #(\d+)", status.inner_text()).group(1)
    assert second != first
    expect(answers).to_contain_text(f"Clip #{second}", timeout=60_000)
    expect(answers).to_contain_text("label now: not labelled yet")
    page.keyboard.press("5")  # neutral
    expect(status).to_contain_text(re.compile(rf"Clip #{second} labelled neutral\. Next: clip #\d+, not labelled yet \(1 to go\)"),
                                   timeout=60_000)

    page.locator("#label-undo").click()  # the last label given here, on the clip before the one shown
    expect(status).to_contain_text(f"Undone neutral on clip #{second}; current label: none", timeout=60_000)
    expect(answers).to_contain_text(f"Clip #{second}", timeout=60_000)
    page.locator("#label-undo").click()
    expect(status).to_contain_text(f"Undone joy on clip #{first}; current label: none", timeout=60_000)
    expect(answers).to_contain_text(f"Clip #{first}", timeout=60_000)
    open_fold(page, "fold-history")  # the history says what the undo did, not the label a second time
    expect(page.locator("#label-history")).to_contain_text("joy undone", timeout=60_000)
    assert page.locator("#label-history").inner_text().count("joy") == 2  # the label, then its undo
    rows = job_result(client.submit(profile, None, api_name="/queue"), 120)[0]["data"]
    assert sorted(r[2] for r in rows) == ["(unlabelled)"] * 3, rows
    assert not getattr(page, "errors", []), page.errors


def test_deleting_the_clip_shown_in_predict_empties_its_answer_there(page, ui_app: RunningApp):
    """Delete in the Label tab the clip the Predict tab shows: its answer goes there too (it said "Saved as
    new clip #N" beside pictures that no longer load, and its words read again answered about it)."""
    from playwright.sync_api import expect

    from conftest import JOY_FACE

    start(page, ui_app.url)
    new_profile(page, "delete-shown-family")
    page.get_by_label("Image only").check()
    page.locator("#predict-image input[type=file]").set_input_files(str(JOY_FACE))
    page.wait_for_timeout(1500)
    clip_id = analyse(page)
    open_tab(page, "Label")
    expect(page.locator("#label-answers")).to_contain_text(f"Clip #{clip_id}", timeout=60_000)
    open_fold(page, "fold-delete")
    page.get_by_label("yes, delete this clip (media, features, labels, cache entries)").check()
    page.locator("#delete-clip").click()
    expect(page.locator("#delete-result")).to_contain_text(f"Deleted clip #{clip_id}", timeout=60_000)
    open_tab(page, "Predict")
    expect(page.locator("#predict-summary")).to_have_text(f"Clip #{clip_id} was deleted, so its answer is no longer shown.",
                                                          timeout=60_000)
    expect(page.locator("#predict-words textarea")).to_have_value("")
    assert not getattr(page, "errors", []), page.errors
