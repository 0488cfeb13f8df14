"""The caregiver subcommands (`python -m emoweb profile|ingest|label|undo|queue|cache|labels|clip`).

In process through `emoweb.cli.main` (EMOWEB_DATA_DIR in a temp dir), plus one real subprocess for
the exit status and the one-line error. Only a face photo is decoded (no speech: no Whisper pass).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import OTHER_FACE
from emoweb import cli
from models import MODELS
from test_services import make_checkpoint_root

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path, monkeypatch, tmp_path_factory) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("EMOWEB_DATA_DIR", str(data))
    monkeypatch.setenv("EMOWEB_CHECKPOINT_ROOT", str(make_checkpoint_root(tmp_path_factory.mktemp("checkpoints"))))
    monkeypatch.delenv("EMOWEB_DATABASE_URL", raising=False)
    monkeypatch.delenv("EMOWEB_PROFILE", raising=False)
    return data


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def run_json(capsys, *argv: str):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.slow
def test_ingest_a_folder_names_each_clip_as_given_with_its_notes(env: Path, capsys, joy_face: Path, tmp_path: Path) -> None:
    """A folder's clips are stored (its note file skipped), each line starting with the answer in the app's words
    (the same once stored); a byte-identical copy under another name is named as given and as stored; each
    new clip's notes are under its line."""
    assert run_json(capsys, "profile", "create", "Anna")["name"] == "Anna"
    folder = tmp_path / "phone"
    folder.mkdir()
    (folder / "smile.jpg").write_bytes(joy_face.read_bytes())
    (folder / "notes.txt").write_text("Tuesday: she smiled at the dog\n", encoding="utf-8")
    code, out, _ = run(capsys, "ingest", str(folder), "--profile", "Anna")
    assert code == 0
    assert out.splitlines()[0].startswith("clip 1 (new): smile.jpg: ")
    assert out.splitlines()[1:] == ["  note: still image: no audio", "skipped, not clips: notes.txt (subfolders are not searched)"]
    stored = run_json(capsys, "ingest", str(folder / "smile.jpg"), "--profile", "Anna")[0]  # answered from the database
    assert not stored["new"] and stored["senses"] and stored["headline"]["confidence"] in ("fairly sure", "probably", "not sure")
    assert stored["notes"] == stored["clip"]["notes"] == ["still image: no audio"]  # stored with the clip, not lost
    assert out.splitlines()[0].startswith(f"clip 1 (new): smile.jpg: {cli.answer_text(stored['headline'])}; ")  # the same words
    answers = [cli.model_answer(m, p["label"] if p["decided"] else None, p["probs"], m in stored["headline"]["confident"])
               for m, p in stored["predictions"].items()]  # each model as `predict` writes it, confident ones marked
    assert all(a in out for a in answers)
    assert [name for name in ("EmoAsst", "MER-CLIP", "MER-SEM-MBT", "Foal-Net") if f"{name} -> " in out] == sorted(
        (a.split(" -> ")[0] for a in answers), key=out.index)  # in the README's order, as predict prints them
    copy = tmp_path / "same smile.jpg"
    copy.write_bytes(joy_face.read_bytes())
    code, out, _ = run(capsys, "ingest", str(copy), "--profile", "Anna")
    assert code == 0 and out.startswith("clip 1 (already stored as 'smile.jpg'): same smile.jpg: ")
    assert out.splitlines()[1:] == ["  note: still image: no audio"]


@pytest.mark.slow
def test_caregiver_commands_end_to_end(env: Path, capsys, joy_face: Path, tmp_path: Path) -> None:
    assert run_json(capsys, "profile", "create", "Anna")["labels"][3] == "joy"
    code, out, _ = run(capsys, "profile", "create", "Bo", "--labels", "calm, upset")
    assert code == 0 and "calm, upset" in out
    assert [p["name"] for p in run_json(capsys, "profile", "list")] == ["Anna", "Bo"]

    missing = tmp_path / "missing.mp4"
    code, out, _ = run(capsys, "ingest", str(joy_face), str(missing), "--profile", "Anna")
    assert code == 1 and "clip 1 (new)" in out and "missing.mp4: error: file not found" in out
    clip = run_json(capsys, "ingest", str(joy_face), "--profile", "Anna")[0]
    assert clip["new"] is False and clip["clip"]["id"] == 1
    stored = env / clip["clip"]["media_path"]
    assert stored.is_file() and stored.parent == env / "media" / "1"

    code, out, _ = run(capsys, "label", "1", "joy", "--profile", "Anna", "--note", "<b>big smile</b>", "--annotator", "mum")
    assert code == 0 and out.strip() == "clip 1 labelled 'joy'"
    code, out, _ = run(capsys, "label", "1", "Joy", "--profile", "Anna")  # a second tap: nothing a later undo must withdraw
    assert code == 0 and out.strip() == "clip 1 already labelled 'joy': nothing recorded"
    for argv, message in [
        (("label", "1", "giggly", "--profile", "Anna"), "error: label 'giggly' is not in the label set of profile 'Anna' (anger, disgust, "
         "fear, joy, neutral, sadness, surprise); to add it, allow a new label explicitly (--allow-new-label)"),
        (("label", "1", "joy", "--profile", "Bo"), "error: no clip 1 in profile 'Bo'"),
        (("label", "77", "joy", "--profile", "Anna"), "error: no clip 77"),
        (("label", "../1", "joy", "--profile", "Anna"), "error: no clip '../1': clip ids are whole numbers"),
        (("label", "1", "joy", "--profile", "Nobody"), "error: no profile 'Nobody'"),
        (("queue", "--profile", "Nobody"), "error: no profile 'Nobody'"),
        (("queue", "--profile", "Anna", "--limit", "0"), "error: --limit 0: give 1 or more clips (or leave it out for all)"),
        (("cache", "rebuild", "--profile", "Nobody"), "error: no profile 'Nobody'"),
        (("undo", "../../etc/passwd", "--profile", "Anna"), "error: no clip '../../etc/passwd'"),
        (("clip", "delete", "9", "--profile", "Anna"), "error: no clip 9"),
        (("clip", "delete", "1", "--profile", "Bo"), "error: no clip 1 in profile 'Bo'"),  # Anna's clip 1 stays
        (("profile", "delete", "Nobody"), "error: no profile 'Nobody'"),
        (("profile", "create", "Cy", "--labels", " , "), "error: --labels ' , ' names no label: give comma-separated labels"),
        (("profile", "create", "Cy", "--labels", "happy,Happy"), "error: labels 'happy' and 'Happy' read alike: keep one"),
        (("ingest", str(joy_face), "--profile", "Nobody"), "error: no profile 'Nobody'"),
    ]:
        code, out, err = run(capsys, *argv)
        assert code == 2 and err.startswith(message) and err.count("\n") == 1, (argv, err)
    code, out, _ = run(capsys, "label", "1", "giggly", "--profile", "Anna", "--allow-new-label")
    assert code == 0 and out.strip() == "clip 1 labelled 'giggly' (replaces 'joy'; `undo 1 --profile 1` brings it back)"
    assert "giggly" in run_json(capsys, "profile", "list")[0]["labels"]
    assert run(capsys, "undo", "1", "--profile", "Bo")[2].startswith("error: no clip 1 in profile 'Bo'")
    assert run_json(capsys, "undo", "1", "--profile", "Anna") == {"clip_id": 1, "undone": "giggly", "current": "joy"}

    queue = run_json(capsys, "queue", "--profile", "Anna")
    assert [(e["clip_id"], e["label"]) for e in queue] == [(1, "joy")]
    assert list(queue[0]["top_labels"]) == [m for m in MODELS if m in queue[0]["top_labels"]]  # the registry's order
    rebuilt = run_json(capsys, "cache", "rebuild", "--profile", "Anna")
    assert rebuilt["emoasst"]["n"] == 1 and rebuilt["emoasst"]["n_per_label"] == {"joy": 1}
    code, out, _ = run(capsys, "cache", "rebuild", "--profile", "Anna")
    assert code == 0 and out.startswith("EmoAsst: careful mode: too few labelled clips to measure")
    assert out.count("too few labelled clips") == len(rebuilt)  # said once per model, then what to label about it
    assert "\n  1 labelled clip(s): joy 1; to measure it, label 1 more clip of joy, 2 clips of a second label;" in out
    assert [line.split(":")[0] for line in out.splitlines() if not line.startswith(" ")] == ["EmoAsst", "MER-CLIP", "MER-SEM-MBT", "Foal-Net"]
    assert "alpha" not in out and "leave-one-out" not in out  # the settings are in --json
    assert rebuilt["emoasst"]["n"] == 1 and rebuilt["emoasst"]["active"] and rebuilt["emoasst"]["tuning"] == "careful"
    shown = run_json(capsys, "cache", "show", "--profile", "Anna")
    assert [s["active"] for s in shown if s["model"] == "emoasst"] == [True, False]
    code, out, _ = run(capsys, "cache", "show", "--profile", "Anna")  # in words: what each snapshot does
    emoasst = [line.split("EmoAsst", 1)[1].split(" 20")[0].strip() for line in out.splitlines() if " EmoAsst " in line]
    assert code == 0 and emoasst == ["in use: careful cache", "old"], out
    assert re.search(r" in use: careful cache +20\d\d-\d\d-\d\d \d\d:\d\d UTC  joy 1\n", out), out  # no Python dict, no ISO stamp
    code, out, _ = run(capsys, "ingest", str(OTHER_FACE), "--profile", "Anna")  # answered with the cache just built
    assert code == 0 and out.splitlines()[1].startswith("  with the profile's labelled clips: EmoAsst"), out
    run(capsys, "clip", "delete", "2", "--profile", "Anna", "--yes")

    export = tmp_path / "labels.json"
    code, out, _ = run(capsys, "labels", "export", str(export), "--profile", "Anna")
    assert code == 0 and out == f"1 label(s) of profile 'Anna' written to {export} (JSON)\n"
    assert [p.name for p in tmp_path.glob(".*.part")] == []
    code, _, err = run(capsys, "labels", "export", str(tmp_path / "no such folder" / "l.csv"), "--profile", "Anna")
    assert code == 2 and err == f"error: cannot write {tmp_path / 'no such folder' / 'l.csv'}: its folder does not exist\n"
    rows = json.loads(export.read_text())["rows"]
    assert [(r["label"], r["note"], r["annotator"]) for r in rows] == [("joy", "<b>big smile</b>", "mum")]
    code, csv_text, _ = run(capsys, "labels", "export", "--profile", "Anna")
    assert code == 0 and csv_text.splitlines()[0] == "sha256,original_name,label,annotator,note,created"
    run(capsys, "undo", "1", "--profile", "Anna")
    report = run_json(capsys, "labels", "import", str(export), "--profile", "Anna")
    assert (report["imported"], report["unmatched"], report["refused"]) == (1, [], [])
    bad = tmp_path / "bad.csv"
    bad.write_text(f"sha256,label\n{rows[0]['sha256']},bored\n", encoding="utf-8")
    code, out, _ = run(capsys, "labels", "import", str(bad), "--profile", "Anna")
    assert code == 1 and out.splitlines()[-1] == "refused: line 2: label 'bored' is not in the label set of 'Anna'"
    code, out, _ = run(capsys, "labels", "import", str(export), "--profile", "Bo")  # the wrong profile: nothing matches
    assert code == 1 and out.splitlines()[-1] == ("none of the file's clips is in profile 'Bo': is it the right profile? "
                                                  "(`clip list --profile Bo` lists its clips)")
    code, out, err = run(capsys, "labels", "import", str(tmp_path / "nope.csv"), "--profile", "Anna")
    assert code == 2 and err == f"error: cannot read {tmp_path / 'nope.csv'}: file not found\n"
    code, out, err = run(capsys, "labels", "import", str(tmp_path), "--profile", "Anna")
    assert code == 2 and err == f"error: cannot read {tmp_path}: it is a folder\n"

    assert [c["id"] for c in run_json(capsys, "clip", "list", "--profile", "Anna")] == [1]
    code, out, err = run(capsys, "clip", "delete", "1", "--profile", "Anna")  # as profile delete: asked, or --yes
    assert (code, out) == (2, "") and err == ("error: deleting clip 1 ('joy_eileen_collins.jpg') of profile 'Anna', with its labels and lessons "
                                             "cannot be undone: add --yes to confirm (no terminal to ask at)\n") and stored.exists()
    code, out, _ = run(capsys, "clip", "delete", "1", "--profile", "Anna", "--yes")
    assert code == 0 and out == "deleted clip 1 of 'Anna'; cache rebuilt without it (EmoAsst, MER-CLIP, MER-SEM-MBT, Foal-Net)\n"
    assert not stored.exists()
    code, out, err = run(capsys, "profile", "delete", "Anna")  # no terminal to ask at: refused, nothing deleted
    assert (code, out) == (2, "") and err == ("error: deleting profile 'Anna' with its 0 clip(s), labels and caches cannot be "
                                             "undone: add --yes to confirm (no terminal to ask at)\n")
    code, out, _ = run(capsys, "profile", "delete", "Anna", "--yes")
    assert code == 0 and out.startswith("deleted profile 'Anna'")
    assert not (env / "media" / "1").exists()


def test_errors_are_one_line_with_a_nonzero_exit(env: Path) -> None:
    cmd = [sys.executable, "-m", "emoweb", "label", "3", "joy", "--profile", "nobody"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == "error: no profile 'nobody'\n" and proc.stdout == ""


def test_deleting_a_profile_at_a_terminal_asks_first(env: Path, capsys) -> None:
    """A real subprocess whose stdin is a terminal (a pseudo-terminal): anything but yes keeps the profile."""
    import pty

    run(capsys, "profile", "create", "Bo")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for answer, code, kept in ((b"\n", 1, True), (b"no\n", 1, True), (b"\x04", 1, True), (b"y\n", 0, False)):  # \x04: Ctrl-D
        controller, terminal = pty.openpty()
        os.write(controller, answer)
        proc = subprocess.run([sys.executable, "-m", "emoweb", "profile", "delete", "Bo"], stdin=terminal, cwd=REPO,
                              env=environment, capture_output=True, text=True, timeout=300)
        os.close(terminal), os.close(controller)
        assert proc.stdout.startswith("delete profile 'Bo' with its 0 clip(s), labels and caches? It cannot be undone. [y/N] ")
        assert proc.returncode == code, proc.stderr
        assert ("nothing deleted: profile 'Bo' kept" in proc.stdout) is kept
        assert [p["name"] for p in run_json(capsys, "profile", "list")] == (["Bo"] if kept else [])


NO_TORCH_CHECK = """
import contextlib, io, json, sys
from emoweb.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    results.append([argv, code, err.getvalue(), "torch" in sys.modules])
print(json.dumps(results))
"""


def test_an_unknown_profile_is_answered_without_importing_torch(env: Path, tmp_path: Path) -> None:
    """Every caregiver command given a profile that does not exist fails with its one line
    before anything imports torch (which alone takes seconds): checked in a fresh process, per command."""
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"RIFF")  # never read: the profile is checked first
    unknown_profile = [
        ["profile", "delete", "nosuch"], ["ingest", str(clip), "--profile", "nosuch"],
        ["label", "1", "joy", "--profile", "nosuch"], ["queue", "--profile", "nosuch"],
        ["cache", "rebuild", "--profile", "nosuch"], ["cache", "show", "--profile", "nosuch"],
        ["labels", "export", "--profile", "nosuch"], ["lesson", "1", "--profile", "nosuch"],
        ["lesson", "--profile", "nosuch"], ["clip", "list", "--profile", "nosuch"],
        ["clip", "delete", "9", "--profile", "nosuch"], ["undo", "9", "--profile", "nosuch"],
    ]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_CHECK, json.dumps(unknown_profile)], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r[0] for r in results] == unknown_profile
    for argv, code, err, torch_loaded in results:
        assert (code, err, torch_loaded) == (2, "error: no profile 'nosuch'\n", False), argv


def test_argument_bytes_that_are_not_utf8_are_stored_replaced_or_one_error_line(env: Path, tmp_path: Path) -> None:
    """Real subprocesses given raw bytes (0xff is never UTF-8): Python hands them over as lone surrogates."""
    import sqlite3

    from emoweb.config import get_settings
    from emoweb.services import CaregiverService
    from test_services import add_synthetic

    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def emoweb(*argv: str | bytes) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "emoweb", *argv], cwd=REPO, env=environment, capture_output=True, timeout=300)

    created = emoweb("profile", "create", b"kid\xff", "--labels", b"calm,up\xffset", "--json")
    assert created.returncode == 0, created.stderr
    assert (json.loads(created.stdout)["name"], json.loads(created.stdout)["labels"]) == ("kid\ufffd", ["calm", "up\ufffdset"])
    service = CaregiverService(get_settings())
    clip_id = add_synthetic(service, "kid\ufffd", 1, ["calm"], seed=31)[0]
    sha = service.get_clip(clip_id).sha256
    service.close()

    labelled = emoweb("label", str(clip_id), b"up\xffset", "--profile", b"kid\xff", "--annotator", b"mum\xfe", "--note", b"caf\xe9 =1")
    assert (labelled.returncode, labelled.stdout, labelled.stderr) == (
        0, f"clip {clip_id} labelled 'up\ufffdset' (replaces 'calm'; `undo {clip_id} --profile 1` brings it back)\n".encode(), b"")
    refused = emoweb("label", str(clip_id), b"x\xff", "--profile", b"kid\xff")
    assert refused.returncode == 2 and refused.stdout == b""
    assert refused.stderr.decode().startswith("error: label 'x\ufffd' is not in the label set") and refused.stderr.count(b"\n") == 1
    label_file = tmp_path / "labels.csv"
    label_file.write_bytes(b"sha256,label,annotator,note\n" + sha.encode() + b",calm,gran\xe9,\xff\xfe\n")
    imported = emoweb("labels", "import", str(label_file), "--profile", b"kid\xff", "--json")
    assert imported.returncode == 0 and json.loads(imported.stdout)["imported"] == 1, imported.stderr

    with sqlite3.connect(env / "emoweb.sqlite3") as connection:
        rows = connection.execute("SELECT label, annotator, note FROM corrections WHERE clip_id = ? ORDER BY id", (clip_id,)).fetchall()
    assert rows[1:] == [("up\ufffdset", "mum\ufffd", "caf\ufffd =1"), ("calm", "gran\ufffd", "\ufffd\ufffd")]


def test_a_model_that_knows_none_of_the_profiles_labels_gives_no_answer_and_no_confidence(env: Path, capsys, joy_face: Path) -> None:
    """Labels of the caregiver's own (calm, upset, excited): a closed-set model (MER-SEM-MBT, Foal-Net) has no
    column for any of them, so its stored logits are all alike: a guess from nothing, which voted for the first
    label ('calm' on every clip). It answers nothing until the profile's labelled clips teach it, and says
    why; a model that can score them (EmoAsst reads label words) is never "confident" on them, its level
    being calibrated on the seven emotions."""
    from emoweb.services.records import UNKNOWN_LABELS

    assert run(capsys, "profile", "create", "Ben", "--labels", "calm,upset,excited")[0] == 0
    code, out, _ = run(capsys, "ingest", str(joy_face), "--profile", "Ben", "--json")
    assert code == 0, out
    result = json.loads(out)[0]
    answers, head = result["predictions"], result["headline"]
    closed = {m for m in answers if m in ("sem_mbt", "foalnet")}
    assert closed == {"sem_mbt", "foalnet"}, answers  # the shipped checkpoints
    for m in closed:
        assert (answers[m]["decided"], answers[m]["label"], answers[m]["why_not"]) == (False, None, UNKNOWN_LABELS), answers[m]
    assert head["models"] == len(answers) - len(closed) and head["confident"] == [], head
    code, out, _ = run(capsys, "ingest", str(joy_face), "--profile", "Ben")
    assert out.count(f"no decision ({UNKNOWN_LABELS})") == len(closed), out

    # the seven emotions: the same models answer
    assert run(capsys, "profile", "create", "Cara")[0] == 0
    answers = json.loads(run(capsys, "ingest", str(joy_face), "--profile", "Cara", "--json")[1])[0]["predictions"]
    assert all(a["decided"] and a["why_not"] == "" for a in answers.values()), answers


@pytest.mark.parametrize(("argv", "extra", "line"), [
    # a child's name where predict takes the backbone set (its old spelling --profile): before anything loads
    (["predict", "PHOTO", "--profile", "Anna"], {}, "error: unknown backbone set 'Anna' (choose embedded or paper; a child's "
                                                    "profile goes to ingest, label and the other caregiver commands)"),
    (["predict", "PHOTO"], {"EMOWEB_PROFILE": "Anna"}, "error: unknown backbone set 'Anna'"),
    (["predict", "PHOTO"], {"EMOWEB_DEVICE": "gpu"}, "error: device 'gpu': not a device (auto, cpu, cuda, cuda:N or mps)"),
    (["profile", "list"], {"EMOWEB_MAX_SECONDS": "abc"}, "error: EMOWEB_MAX_SECONDS='abc' is not a number"),
    (["profile", "list"], {"EMOWEB_THREADS": "1.5"}, "error: EMOWEB_THREADS='1.5' is not a whole number"),
    (["profile", "list"], {"EMOWEB_DATA_DIR": "FILE"}, "error: File exists: "),
])
def test_a_setting_that_cannot_be_used_is_one_line(env: Path, tmp_path: Path, argv: list[str], extra: dict, line: str) -> None:
    """Settings and a backbone set given wrongly: one line naming the problem and exit 2, never a traceback."""
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    extra = {k: str(a_file) if v == "FILE" else v for k, v in extra.items()}
    argv = [str(OTHER_FACE) if a == "PHOTO" else a for a in argv]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **extra}
    proc = subprocess.run([sys.executable, "-m", "emoweb", *argv], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and proc.stdout == "", (proc.returncode, proc.stdout, proc.stderr)
    *note, last = proc.stderr.splitlines()  # the old --profile spelling adds its deprecation note first
    assert last.startswith(line) and len(note) == ("--profile" in argv) and "Traceback" not in proc.stderr, proc.stderr


def test_the_backbone_sets_named_in_the_settings_are_the_ones_that_exist() -> None:
    from emoweb.config import BACKBONE_SETS
    from models.backbones import PROFILES

    assert BACKBONE_SETS == tuple(PROFILES)


def test_ingest_says_each_clip_as_it_is_stored_and_what_an_interrupt_kept(env: Path, tmp_path: Path) -> None:
    """A folder of clips: each clip's line comes when it is stored (the lines all came at the end, and
    Ctrl-C then printed only "interrupted" while some clips were stored); Ctrl-C says how many were kept."""
    import signal

    from conftest import FACES, VOICES

    folder = tmp_path / "week"
    folder.mkdir()
    for path in (*VOICES.values(), *FACES.values()):
        (folder / path.name).write_bytes(path.read_bytes())
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "EMOWEB_THREADS": "1"}
    assert subprocess.run([sys.executable, "-m", "emoweb", "profile", "create", "Dana"], cwd=REPO, env=environment,
                          capture_output=True, timeout=120).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "emoweb", "ingest", str(folder), "--profile", "Dana"], cwd=REPO, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # comes while the other five are still to do
        assert re.match(r"clip \d+ \(new\): ", first), (first, proc.stderr.read() if proc.poll() is not None else "")
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    printed = [line for line in [first, *rest.splitlines()] if line.startswith("clip ")]
    stopped = re.search(r"stopped after (\d) of 6 clip\(s\): (\d) stored and kept", err)
    assert proc.returncode == 130 and stopped, (proc.returncode, err)
    assert int(stopped.group(1)) == int(stopped.group(2)) == len(printed) < 6, (printed, err)
    listed = subprocess.run([sys.executable, "-m", "emoweb", "clip", "list", "--profile", "Dana"], cwd=REPO, env=environment,
                            capture_output=True, text=True, timeout=120).stdout
    # the clip being stored at the interrupt is stored whole or not at all (one transaction)
    assert len([line for line in listed.splitlines() if line.strip()[:1].isdigit()]) in (len(printed), len(printed) + 1), listed
