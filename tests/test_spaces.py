"""A public deployment without login, started as Hugging Face Spaces starts it (SPACE_ID set): each
visitor (a browser's owner key, or an API client's) sees only their own profiles, clips, labels,
exports and caches; a visitor's data past the stated time without activity is deleted from the
database and the disk; the per-visitor limits answer with one line."""
from __future__ import annotations

import hashlib
import re
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import write_wav
from ui_helpers import (PREDICT_TIMEOUT_S, RunningApp, assert_refused, job_result, profile_value, refused_calls,
                        start_app, stop_app)

pytestmark = pytest.mark.slow

KEY_A = "visitor-a-key-0123456789abcdef"
KEY_B = "visitor-b-key-0123456789abcdef"
FAMILY = "Mia at home"
MAX_CLIPS = 1


@pytest.fixture(scope="module")
def spaces_app(tmp_path_factory) -> RunningApp:
    app = start_app(tmp_path_factory.mktemp("spaces_app"), {"SPACE_ID": "emoweb/test-space",
                                                            "EMOWEB_VISITOR_MAX_CLIPS": str(MAX_CLIPS)})
    yield app
    stop_app(app)


def client(app: RunningApp, key: str | None):
    from gradio_client import Client

    headers = {"X-EmoWeb-Owner": key} if key else None
    return Client(app.url, headers=headers, verbose=False, download_files=False)


def profile_names(c) -> list[str]:
    seen = job_result(c.submit(None, api_name="/profiles"), 60)
    return [choice[0] for choice in seen["choices"]]


@pytest.fixture(scope="module")
def visitor_a(spaces_app: RunningApp, composite_clip: Path) -> dict:
    """Visitor A's profile with one clip, labelled, with a rebuilt cache (a memo file on disk)."""
    a = client(spaces_app, KEY_A)
    profile = profile_value(job_result(a.submit(FAMILY, "", api_name="/create_profile"), 120))
    from gradio_client import handle_file

    out = job_result(a.submit(handle_file(str(composite_clip)), None, None, profile, api_name="/predict"), PREDICT_TIMEOUT_S)
    clip = out[12]
    assert re.fullmatch(r"\d+", clip), out[0]
    job_result(a.submit(profile, clip, "joy", "A's note", False, api_name="/label"), 120)
    md = job_result(a.submit(profile, api_name="/rebuild_cache"), 300)[0]
    assert re.search(r"snapshots 0 → [1-9]", md), md
    return {"client": a, "profile": profile, "clip": clip}


def test_visitors_see_only_their_own_data_through_the_api(spaces_app: RunningApp, visitor_a: dict, tmp_path: Path):
    from gradio_client import handle_file

    a, a_profile, a_clip = visitor_a["client"], visitor_a["profile"], visitor_a["clip"]
    b = client(spaces_app, KEY_B)
    assert profile_names(a) == ["(don't save)", FAMILY]
    assert FAMILY not in profile_names(b)  # B's list and B's dropdown

    # B may use the same name: names are per owner, and "already exists" would tell B that A has one
    b_profile = profile_value(job_result(b.submit(FAMILY, "", api_name="/create_profile"), 120))
    assert b_profile != a_profile

    label_file = tmp_path / "labels.csv"
    label_file.write_text(job_result_text(a.submit(a_profile, "csv", api_name="/export_labels")), encoding="utf-8")
    assert "joy" in label_file.read_text()
    handle = handle_file(str(label_file))
    audio = handle_file(str(write_wav(tmp_path / "b.wav", [0.1, -0.1] * 8_000)))
    assert_refused(b, refused_calls(a_profile, a_clip, handle, audio), "no profile")
    # A's clip through B's own profile: not B's clip
    assert_refused(b, [((b_profile, a_clip), "/show_clip"), ((b_profile, a_clip, "anger", "", False), "/label"),
                       ((b_profile, a_clip), "/undo"), ((b_profile, a_clip, True), "/delete_clip")], "no clip")
    # A's name from B names B's own (empty) profile, never A's
    assert "joy" not in job_result_text(b.submit(FAMILY, "csv", api_name="/export_labels"))
    report = job_result(b.submit(FAMILY, handle, False, api_name="/import_labels"), 120)
    assert "Imported **0**" in report, report  # A's clips are not in B's profile: nothing to label

    # a client without a key gets a space of its own, empty; a malformed key is refused in one line
    anon = client(spaces_app, None)
    assert profile_names(anon) == ["(don't save)"]
    job_result(anon.submit("anon-family", "", api_name="/create_profile"), 120)
    assert "anon-family" in profile_names(anon)
    assert "anon-family" not in profile_names(client(spaces_app, None)) + profile_names(a) + profile_names(b)
    with pytest.raises(Exception, match="owner key must be"):
        job_result(client(spaces_app, "short").submit(None, api_name="/profiles"), 60)

    # B deletes everything of B's: A's data stays
    with pytest.raises(Exception, match="tick the box"):
        job_result(b.submit(False, api_name="/delete_my_data"), 60)
    status = job_result(b.submit(True, api_name="/delete_my_data"), 120)[2]
    assert "1 profile(s)" in status, status
    assert profile_names(b) == ["(don't save)"]
    rows = job_result(a.submit(a_profile, None, api_name="/queue"), 120)[0]
    assert [(str(r[0]), r[2]) for r in rows["data"]] == [(a_clip, "joy")], rows
    assert "A's note" in job_result_text(a.submit(a_profile, "csv", api_name="/export_labels"))


def job_result_text(job) -> str:
    exported = job_result(job, 120)
    return Path(exported if isinstance(exported, str) else exported["path"]).read_text(encoding="utf-8")


def test_visitor_limits_answer_in_one_line(spaces_app: RunningApp, visitor_a: dict, tmp_path: Path):
    from gradio_client import handle_file

    silent = write_wav(tmp_path / "another.wav", [0.0] * 16_000)
    with pytest.raises(Exception, match=f"at most {MAX_CLIPS} clip") as info:
        job_result(visitor_a["client"].submit(handle_file(str(silent)), None, None, visitor_a["profile"],
                                              api_name="/predict"), 120)
    assert "\n" not in str(info.value).strip()
    clips = job_result(visitor_a["client"].submit(visitor_a["profile"], None, api_name="/queue"), 120)[0]["data"]
    assert len(clips) == MAX_CLIPS  # nothing stored past the limit


@pytest.mark.browser
def test_two_browsers_see_only_their_own_profiles(spaces_app: RunningApp, visitor_a: dict):
    """Two browser contexts (two visitors, each with its own local storage): C's profile is neither listed
    for D nor reachable by its id; C's key outlives a reload; C deletes everything of C's."""
    from test_ui_browser import CHROMIUM, CHROMIUM_ARGS, new_profile, open_fold

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            c, d = (browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(2))
            for context in (c, d):
                context.set_default_timeout(60_000)
            page_c, page_d = c.new_page(), d.new_page()
            for page in (page_c, page_d):
                page.goto(spaces_app.url, wait_until="domcontentloaded", timeout=120_000)
                expect(page.locator("#privacy-notice")).to_contain_text("deleted 24 hours after your last visit", timeout=120_000)
            key_c, key_d = (page.evaluate("localStorage.getItem('emoweb-owner')") for page in (page_c, page_d))
            assert key_c and key_d and key_c != key_d

            c_profile = new_profile(page_c, "Leo at school")
            assert profile_options(page_c) == ["(don't save)", "Leo at school"]

            page_d.locator("#profiles-refresh").click()
            assert profile_options(page_d) == ["(don't save)"]  # neither C's nor A's (API) profile
            # D types C's profile id as a custom value: every action on it is refused
            page_d.locator("#profile input").fill(c_profile)
            page_d.locator("#profile input").press("Enter")
            page_d.get_by_role("tab", name="Label", exact=True).click()
            open_fold(page_d, "fold-queue")
            page_d.locator("#queue-refresh").click()
            expect(page_d.get_by_text(f"no profile '{c_profile}'").first).to_be_visible(timeout=60_000)

            page_c.reload(wait_until="domcontentloaded")  # the key stays in C's local storage
            expect(page_c.locator("#profile")).to_be_visible(timeout=120_000)
            expect(page_c.locator("#profile input")).to_have_value("(don't save)", timeout=60_000)  # a new page chooses none
            offered = []
            for _ in range(60):  # the list arrives once the page has loaded: C's profile is still C's
                offered = profile_options(page_c)
                if len(offered) > 1:
                    break
                page_c.wait_for_timeout(1000)
            assert offered == ["(don't save)", "Leo at school"]
            assert page_c.evaluate("localStorage.getItem('emoweb-owner')") == key_c

            page_c.locator("#delete-mine-box").get_by_text("Delete everything of mine").first.click()
            page_c.locator("#delete-mine-confirm input").check()
            page_c.locator("#delete-mine").click()
            expect(page_c.locator("#profile-status")).to_contain_text("Deleted everything of yours: 1 profile(s)", timeout=60_000)
            assert profile_options(page_c) == ["(don't save)"]
        finally:
            browser.close()


def profile_options(page) -> list[str]:
    """The names the profile dropdown offers."""
    page.locator("#profile input").click()
    options = page.get_by_role("option")
    options.first.wait_for(timeout=30_000)
    names = [t.strip().splitlines()[-1].strip() for t in options.all_inner_texts()]  # without the "✓" of the chosen one
    page.keyboard.press("Escape")
    return names


def test_idle_visitor_data_is_deleted_from_database_and_disk(spaces_app: RunningApp, visitor_a: dict,
                                                             composite_clip: Path):
    """Runs last in this module: it deletes visitor A."""
    data, profile = spaces_app.data_dir, int(visitor_a["profile"])
    uploads = Path(spaces_app.log).parent / "gradio"  # GRADIO_TEMP_DIR of apps started by ui_helpers
    sha = hashlib.sha256(composite_clip.read_bytes()).hexdigest()
    media = data / "media" / str(profile)
    assert any(media.iterdir()), "A's clip should be stored"
    assert list((data / "memo").glob(f"profile-{profile}-*.memo")), "A's rebuild should have left a memo file"
    assert sha in _hashes(uploads), "A's upload should be in the server's upload folder"
    clips = [int(visitor_a["clip"])]
    counts_before = _rows(data, profile, clips)
    assert all(counts_before.values()), counts_before

    # A's last activity 25 hours ago (the default time is 24 h); the next request by anyone sweeps
    stale = (datetime.now(timezone.utc) - timedelta(hours=25)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(data / "emoweb.sqlite3", timeout=30) as db:
        db.execute("UPDATE profiles SET last_active = ? WHERE id = ?", (stale, profile))
    assert FAMILY not in profile_names(client(spaces_app, KEY_B))

    assert _rows(data, profile, clips) == dict.fromkeys(counts_before, 0)
    assert not media.exists()
    assert not list((data / "memo").glob(f"profile-{profile}-*.memo"))
    assert sha not in _hashes(uploads)
    assert FAMILY not in profile_names(visitor_a["client"])


def _rows(data: Path, profile: int, clips: list[int]) -> dict[str, int]:
    """Rows of a profile and of its clips, per table."""
    marks = ",".join("?" * len(clips))
    queries = {
        "profiles": ("SELECT count(*) FROM profiles WHERE id = ?", [profile]),
        "clips": (f"SELECT count(*) FROM clips WHERE id IN ({marks})", clips),
        "clip_features": (f"SELECT count(*) FROM clip_features WHERE clip_id IN ({marks})", clips),
        "clip_senses": (f"SELECT count(*) FROM clip_senses WHERE clip_id IN ({marks})", clips),
        "predictions": (f"SELECT count(*) FROM predictions WHERE clip_id IN ({marks})", clips),
        "corrections": (f"SELECT count(*) FROM corrections WHERE clip_id IN ({marks})", clips),
        "cache_snapshots": ("SELECT count(*) FROM cache_snapshots WHERE profile_id = ?", [profile]),
    }
    with sqlite3.connect(data / "emoweb.sqlite3", timeout=30) as db:
        return {table: db.execute(q, args).fetchone()[0] for table, (q, args) in queries.items()}


def _hashes(folder: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}
