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
from ui_helpers import PREDICT_TIMEOUT_S, RunningApp, job_result, profile_value, start_app, stop_app

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


def refused_calls(profile: str, clip: str, label_file, audio) -> list[tuple[tuple, str]]:
    """Every endpoint that reads or changes a profile, aimed at `profile` (someone else's)."""
    return [
        ((profile, None), "/queue"),
        ((profile, clip), "/show_clip"),
        ((profile, clip, "anger", "", False), "/label"),
        ((profile, clip, ""), "/label_key_1"),
        ((profile, clip), "/undo"),
        ((profile,), "/rebuild_cache"),
        ((profile, "csv"), "/export_labels"),
        ((profile, label_file, False), "/import_labels"),
        ((profile, clip, True), "/delete_clip"),
        ((profile, True), "/delete_profile"),
        ((profile,), "/models_info"),
        (("profile's labelled clips", profile, None, None, "", 10), "/compare_set"),
        ((None, audio, None, profile), "/predict"),
    ]


def assert_refused(c, calls, match: str) -> None:
    for args, api_name in calls:
        with pytest.raises(Exception, match=match) as info:
            job_result(c.submit(*args, api_name=api_name), 120)
        assert "\n" not in str(info.value).strip(), f"{api_name}: not one line: {info.value}"


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
        "predictions": (f"SELECT count(*) FROM predictions WHERE clip_id IN ({marks})", clips),
        "corrections": (f"SELECT count(*) FROM corrections WHERE clip_id IN ({marks})", clips),
        "cache_snapshots": ("SELECT count(*) FROM cache_snapshots WHERE profile_id = ?", [profile]),
    }
    with sqlite3.connect(data / "emoweb.sqlite3", timeout=30) as db:
        return {table: db.execute(q, args).fetchone()[0] for table, (q, args) in queries.items()}


def _hashes(folder: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}
