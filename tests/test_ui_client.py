"""The app's API through gradio_client against the running app: create a profile, predict a composite
clip, see the Label tab word it as the Predict tab did, label it, rebuild the cache (and see the snapshot
count change), export the labels."""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import pytest

from models import DISPLAY_NAMES

from conftest import write_wav
from emoweb.ui.common import esc
from ui_helpers import PREDICT_TIMEOUT_S, RunningApp, job_result, shared_app


pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def ui_app(request, tmp_path_factory) -> RunningApp:
    return shared_app(request, tmp_path_factory)


def test_api_predict_label_rebuild(ui_app: RunningApp, composite_clip: Path, tmp_path: Path):
    from gradio_client import Client, handle_file

    client = Client(ui_app.url, verbose=False, download_files=False)
    api = client.view_api(print_info=False, return_format="dict")
    named = set(api["named_endpoints"])
    for name in ("/predict", "/label", "/rebuild_cache", "/queue", "/undo", "/export_labels", "/import_labels",
                 "/delete_clip", "/create_profile", "/compare_clip", "/compare_set", "/models_info"):
        assert name in named, f"{name} missing from the API: {sorted(named)}"

    created = job_result(client.submit("client-family", "", api_name="/create_profile"), 120)
    profile = created[0]["value"] if isinstance(created[0], dict) else created[0]  # a dropdown update: choices + value
    assert re.fullmatch(r"\d+", str(profile)), created
    assert "client-family" in created[3]
    listed = job_result(client.submit(None, api_name="/profiles"), 60)  # as a new page asks: nothing chosen for it
    assert listed["value"] == "(don't save)" and ["client-family", str(profile)] in listed["choices"], listed

    out = job_result(client.submit(handle_file(str(composite_clip)), None, None, profile,
                                api_name="/predict"), PREDICT_TIMEOUT_S)
    summary, raw, clip_id, table = out[0], out[11], out[12], out[14]
    assert re.fullmatch(r"\d+", clip_id), out[0]
    assert f"#{clip_id}" in summary
    # the headline is the models' vote, stated with its agreement; the table has one row per model
    head = raw["headline"]
    tops = {m: max(v["probs"], key=v["probs"].get) for m, v in raw["stored"]["answers"].items() if v["decided"]}
    votes = Counter(tops.values())
    assert votes[head["label"]] == max(votes.values()) == head["agree"] and head["models"] == len(tops), (head, tops)
    assert head["label"] in summary and head["confidence"] in summary
    assert [r[0] for r in table["data"]] == [DISPLAY_NAMES[m] for m in raw["models"]], table  # as people read them
    assert raw["stored"]["clip_id"] == int(clip_id)
    models = raw["models"]
    assert models, "no model answered"
    for m in models.values():
        assert abs(sum(m["probs"].values()) - 1) < 1e-3
    assert "tomorrow" in raw["clip"]["transcript"]["text"].lower()
    transcript = out[7]
    assert "tomorrow" in str(transcript).lower()

    # the Label tab words the stored clip as the Predict tab did, face against voice included
    shown = job_result(client.submit(profile, clip_id, api_name="/show_clip"), 120)[3]
    assert f"**{esc(head['label'])}**, {esc(head['confidence'])}: {esc(head['reason'])}" in shown, (head, shown)

    status, _ = job_result(client.submit(profile, clip_id, "joy", "api <note>", False, api_name="/label"), 120)
    assert "labelled" in status and "joy" in status
    assert "with your note" in status and "<note>" not in status  # the note is shown once: in the history

    rows = job_result(client.submit(profile, None, api_name="/queue"), 120)[0]
    assert any(str(r[0]) == clip_id and r[2] == "joy" for r in rows["data"]), rows

    md, _plot, snapshots = job_result(client.submit(profile, api_name="/rebuild_cache"), 300)
    assert "snapshots 0 → " in md, md
    # what the rebuild did, per model, in plain words: one labelled clip is too few to judge a cache
    assert md.count("careful mode: too few labelled clips to measure") == 4, md  # each of the four shipped models
    assert re.search(r"snapshots 0 → [1-9]", md), md
    assert "**0**" not in snapshots, snapshots

    # a silent clip in the same profile (which now has a cache): no model may name a label for it
    silent = write_wav(tmp_path / "silence.wav", [0.0] * 48_000)
    silent_id = job_result(client.submit(handle_file(str(silent)), None, None, profile, api_name="/predict"), PREDICT_TIMEOUT_S)[12]
    shown = job_result(client.submit(profile, silent_id, api_name="/show_clip"), 120)[3]
    assert "no decision" in shown and " says " not in shown, shown
    assert "⚠️ the audio track is silent: audio and text models skipped\n" in shown, shown  # stored notes; the kind is no fault
    rows = job_result(client.submit(profile, None, api_name="/queue"), 120)[0]
    assert [r[3] for r in rows["data"] if str(r[0]) == silent_id] == ["-"], rows

    exported = job_result(client.submit(profile, "csv", api_name="/export_labels"), 120)
    text = Path(exported if isinstance(exported, str) else exported["path"]).read_text()
    assert "joy" in text and "api <note>" in text

    with pytest.raises(Exception, match="no profile"):
        job_result(client.submit("no-such-profile", clip_id, "joy", "", False, api_name="/label"), 60)
    # a new label: the Label tab says which box allows it (not the command line's flag); capitals are the set's own
    with pytest.raises(Exception, match="not in the label set .*; to add it, tick 'add it to the profile's labels if new'"):
        job_result(client.submit(profile, clip_id, "frustrated", "", False, api_name="/label"), 60)
    status, _ = job_result(client.submit(profile, clip_id, "JOY", "", False, api_name="/label"), 120)
    assert "labelled **joy**" in status, status

    # deleting the clip also deletes the web server's copy of the upload (matched by content)
    uploads = Path(ui_app.log).parent / "gradio"  # GRADIO_TEMP_DIR of apps started by ui_helpers
    sha = hashlib.sha256(composite_clip.read_bytes()).hexdigest()
    assert sha in _hashes(uploads), "the upload should be in the server's upload folder before deletion"
    status, _ = job_result(client.submit(profile, clip_id, True, api_name="/delete_clip"), 300)
    assert f"Deleted clip #{clip_id}" in status, status
    assert sha not in _hashes(uploads), "a copy of the deleted clip is still in the upload folder"


def _hashes(folder: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_api_login_isolation(tmp_path: Path):
    """With login on (EMOWEB_AUTH), a caregiver sees only their own profiles and cannot list, read, label,
    export, import into, rebuild or delete another caregiver's profile through any endpoint."""
    from gradio_client import Client, handle_file

    from ui_helpers import assert_refused, profile_value, refused_calls, start_app, stop_app

    app = start_app(tmp_path / "auth_app", {"EMOWEB_AUTH": "alice:pw-a,bob:pw-b"})
    try:
        alice = Client(app.url, auth=("alice", "pw-a"), verbose=False, download_files=False)
        bob = Client(app.url, auth=("bob", "pw-b"), verbose=False, download_files=False)
        created = job_result(alice.submit("alice-home", "", api_name="/create_profile"), 120)[0]
        alice_profile = created["value"] if isinstance(created, dict) else created
        job_result(bob.submit("bob-home", "", api_name="/create_profile"), 120)

        seen_by_bob = job_result(bob.submit(None, api_name="/profiles"), 60)
        names = [c[0] for c in (seen_by_bob["choices"] if isinstance(seen_by_bob, dict) else [])]
        assert "bob-home" in names and "alice-home" not in names, seen_by_bob

        label_file = tmp_path / "labels.csv"
        label_file.write_text("sha256,label\n" + "0" * 64 + ",joy\n", encoding="utf-8")
        audio = write_wav(tmp_path / "bob.wav", [0.1, -0.1] * 8_000)
        assert_refused(bob, refused_calls(alice_profile, "1", handle_file(str(label_file)), handle_file(str(audio))),
                       "no profile")
        assert_refused(bob, [(("alice-home", "csv"), "/export_labels")], "no profile")
        # names are per caregiver: bob may have an "alice-home" too, and it is not alice's
        bob_copy = profile_value(job_result(bob.submit("alice-home", "", api_name="/create_profile"), 120))
        assert bob_copy != str(alice_profile)
        still = job_result(alice.submit(None, api_name="/profiles"), 60)
        assert "alice-home" in [c[0] for c in still["choices"]], still
    finally:
        stop_app(app)


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def _status(app_url: str, path: str | Path) -> int:
    """The server's answer to GET /gradio_api/file=<path>."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{app_url}gradio_api/file={path}", timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _shown_paths(value) -> set[str]:
    """Every file path in an endpoint's outputs (images, galleries, players), as gradio_client returns them."""
    if isinstance(value, dict):
        found = {value["path"]} if isinstance(value.get("path"), str) else set()
        return found.union(*(_shown_paths(v) for v in value.values()))
    if isinstance(value, (list, tuple)):
        return set().union(*(_shown_paths(v) for v in value))
    return set()


def test_deleting_a_clip_or_its_profile_deletes_what_was_shown_of_it(ui_app: RunningApp, composite_clip: Path, tmp_path: Path):
    """Analysing a clip in a profile and playing it in the Label tab leaves files in the server's upload
    folder (the face seen, the frames, the face crops, the player's copy). Deleting the clip removes every
    file that appeared then, and the server no longer serves them; another clip's shown files stay
    served. Deleting a whole profile does the same for its clips."""
    from gradio_client import Client, handle_file

    client = Client(ui_app.url, verbose=False, download_files=False)
    uploads = Path(ui_app.log).parent / "gradio"  # GRADIO_TEMP_DIR of apps started by ui_helpers

    def create(name: str) -> str:
        created = job_result(client.submit(name, "", api_name="/create_profile"), 120)[0]
        return str(created["value"] if isinstance(created, dict) else created)

    def analyse(media: Path, profile: str) -> tuple[str, set[Path], set[str]]:
        """(clip id, files that appeared in the upload folder, paths the outputs name) of one clip analysed and played."""
        before = _files(uploads)
        out = job_result(client.submit(handle_file(str(media)), None, None, profile, api_name="/predict"), PREDICT_TIMEOUT_S)
        clip_id = out[12]
        shown = job_result(client.submit(profile, clip_id, api_name="/show_clip"), 120)
        return clip_id, _files(uploads) - before, _shown_paths(list(out) + list(shown))

    # a clip deleted: what was shown of it goes, what was shown of another clip of the profile stays
    profile = create("shown-clip")
    clip_id, appeared, paths = analyse(composite_clip, profile)
    images = {p for p in appeared if p.suffix == ".webp"}
    assert len(images) >= 3, f"face, frames and crops should be files in the upload folder: {sorted(appeared)}"
    assert {Path(p) for p in paths} <= appeared, "an output file outside what this clip's analysis wrote"
    face = next(iter(images))
    assert _status(ui_app.url, face) == 200
    tone = write_wav(tmp_path / "tone.wav", [0.3 * ((i // 20) % 2 * 2 - 1) for i in range(32_000)])
    other_id, other_appeared, _ = analyse(tone, profile)
    player = [p for p in other_appeared if p.name == f"clip{other_id}.wav"]
    assert player, f"the Label tab's player copy of clip {other_id}: {sorted(other_appeared)}"

    msg, _ = job_result(client.submit(profile, clip_id, True, api_name="/delete_clip"), 300)
    assert f"Deleted clip #{clip_id}" in msg, msg
    left = sorted(p for p in appeared if p.exists())
    assert not left, f"files shown of deleted clip {clip_id} remain: {left}"
    assert {_status(ui_app.url, p) for p in appeared} <= {403, 404}, "the server still serves a deleted clip's files"
    assert all(p.exists() for p in other_appeared) and _status(ui_app.url, player[0]) == 200, "another clip's files went too"

    # a profile deleted: every file shown of its clips goes
    profile = create("shown-profile")
    _, appeared, _ = analyse(composite_clip, profile)
    exported = job_result(client.submit(profile, "csv", api_name="/export_labels"), 120)
    appeared.add(Path(exported if isinstance(exported, str) else exported["path"]))
    assert len(appeared) >= 5, sorted(appeared)
    msg = job_result(client.submit(profile, True, api_name="/delete_profile"), 300)[0]
    assert "Deleted profile" in msg, msg
    left = sorted(p for p in appeared if p.exists())
    assert not left, f"files shown of the deleted profile's clip remain: {left}"
    assert {_status(ui_app.url, p) for p in appeared} <= {403, 404}
