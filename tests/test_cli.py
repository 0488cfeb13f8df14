"""The command line's shared behaviour: a fast `--help` and bad-input exit (no torch imported), the
deprecated `--profile` spelling of `--backbones`, `eval` on a manifest without splits, and the
headline of `predict --json` (the UI's rule)."""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FACES
from emoweb import cli

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "gradio", "transformers", "sqlalchemy", "scipy.stats", "models.registry", "emoweb.pipeline.inference")
PROBE = (
    "import sys\n"
    "from emoweb import cli\n"
    "try:\n    rc = cli.main(sys.argv[1:])\nexcept SystemExit as exc:\n    rc = exc.code\n"
    f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), 'RC', rc)\n"
)


def _probe(*argv: str) -> tuple[str, str]:
    """Run the CLI in a fresh interpreter; (last stdout line, stderr)."""
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    return done.stdout.strip().splitlines()[-1], done.stderr


@pytest.mark.parametrize("argv, rc, err", [
    (["--help"], 0, ""),
    (["eval", "--help"], 0, ""),
    (["bench", "--help"], 0, ""),
    (["nosuch"], 2, "invalid choice: 'nosuch'"),
    (["eval", "/nonexistent/manifest.csv"], 2, "error: manifest not found: /nonexistent/manifest.csv"),
    (["predict", "/nonexistent/clip.mp4"], 2, "error: file not found: clip.mp4 (its folder /nonexistent does not exist)"),
    (["predict", "/tmp/no-such-clip.mp4"], 2, "error: file not found: no-such-clip.mp4\n"),
    (["bench", "kshot", "--ks", "4,x"], 2, "error: --ks must be whole numbers separated by commas, not '4,x'"),
    (["bench", "kshot", "--ks", "0,4"], 2, "error: --ks needs at least one K of 1 or more, not '0,4'"),
    (["encode", "m.csv", "--splits", "dev,test"], 2, "error: --splits 'dev,test': expected some of train, dev, val"),
    (["predict", "x.mp4", "--models", "emoasst,bogus"], 2,
     "error: unknown model(s): bogus; known: EmoAsst (emoasst), MER-CLIP (merclip), MER-SEM-MBT (sem_mbt), Foal-Net (foalnet), or all"),
    (["bench", "generalise", "--models", "EmoAsts"], 2, "unknown model(s): EmoAsts;"),
])
def test_help_and_bad_input_answer_without_torch(argv: list[str], rc: int, err: str) -> None:
    line, stderr = _probe(*argv)
    assert line == f"HEAVY [] RC {rc}", stderr
    assert err in stderr


# a text file: named as a video, ffmpeg finds no container in it; named .txt, its tty demuxer would
# play it as ANSI-art video (the same files as conftest.make_bad_inputs)
NO_MEDIA = {
    "notes.mp4": ("this is a text file, not a video\n" * 20, "not a media file or corrupt container: notes.mp4"),
    "notes.txt": ("# My notes\n\nThe clip from Tuesday: she smiled at the dog.\n" * 20, "not a media file (a text file): notes.txt"),
}


@pytest.mark.parametrize("command", ["predict", "inspect"])
@pytest.mark.parametrize("name", sorted(NO_MEDIA))
def test_a_file_that_is_no_media_is_refused_before_the_models_load(command: str, name: str, tmp_path: Path) -> None:
    """One error line, exit code 2, and neither torch, the model registry nor the Predictor imported
    (the models cannot have loaded without them)."""
    text, message = NO_MEDIA[name]
    (tmp_path / name).write_text(text, encoding="utf-8")
    line, stderr = _probe(command, str(tmp_path / name))
    assert line == "HEAVY [] RC 2", stderr
    assert stderr.strip().splitlines() == [f"error: {message}"]


def test_a_batch_of_files_that_are_no_media_is_refused_before_the_models_load(tmp_path: Path) -> None:
    """Several clips: each bad one is reported on its line; none good, so nothing loads (exit 1)."""
    for name, (text, _) in NO_MEDIA.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", PROBE, "predict", *(str(tmp_path / n) for n in sorted(NO_MEDIA))], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "HEAVY [] RC 1", done.stderr
    assert lines[:-1] == [f"{name}: error: {message}" for name, (_, message) in sorted(NO_MEDIA.items())]


def test_a_folder_lists_its_clips_and_skips_what_is_named_otherwise(tmp_path: Path) -> None:
    """Hidden files, system files, files named as another kind and files named nothing that hold plain text
    (README, LICENSE: they failed the whole folder) are skipped; a file named as a clip, or named nothing
    with binary content, is tried (its content decides); subfolders are not entered."""
    from emoweb.pipeline.media import folder_clips

    names = ["a.MOV", "b.mts", "c.opus", "d.jpg", "notes.txt", "list.pdf", "meta.json", ".DS_Store", "._a.MOV", "Thumbs.db"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "e").write_bytes(bytes(range(256)))  # a clip from a camera that names files without extensions
    (tmp_path / "README").write_text("Clips of Anna, week 12.\nThe first one is at the zoo: é ü 🙂\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.mp4").write_bytes(b"x")
    clips, skipped = folder_clips(tmp_path)
    assert [p.name for p in clips] == ["a.MOV", "b.mts", "c.opus", "d.jpg", "e"]
    assert sorted(skipped) == sorted([".DS_Store", "._a.MOV", "README", "Thumbs.db", "list.pdf", "meta.json", "notes.txt", "sub/"])


def test_a_folder_without_clips_is_refused_before_the_models_load(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text(NO_MEDIA["notes.txt"][0], encoding="utf-8")
    (tmp_path / ".DS_Store").write_bytes(b"\0Bud1")
    (tmp_path / "Week 1").mkdir()
    for command in ("predict", "ingest"):
        line, stderr = _probe(command, str(tmp_path), *(["--profile", "P"] if command == "ingest" else []))
        assert line == "HEAVY [] RC 2", stderr
        assert stderr.strip().splitlines() == [f"error: no clips in folder {tmp_path} (not clips: .DS_Store, Week 1/, "
                                               "notes.txt; subfolders are not searched)"]
    (tmp_path / "notes.txt").unlink()
    (tmp_path / ".DS_Store").unlink()
    (tmp_path / "Week 1").rmdir()
    line, stderr = _probe("predict", str(tmp_path))
    assert stderr.strip().splitlines() == [f"error: no clips in folder {tmp_path} (it is empty)"]


@pytest.mark.slow
def test_predict_folder_skips_what_is_not_a_clip(joy_face: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """A parent's folder: two clips, a note, a hidden file and a subfolder. Both clips answered, nothing
    failed, the others listed as skipped (JSON and the plain lines); each clip's notes under its line."""
    from test_services import make_checkpoint_root

    monkeypatch.setenv("EMOWEB_CHECKPOINT_ROOT", str(make_checkpoint_root(tmp_path / "checkpoints")))
    folder = tmp_path / "phone"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (folder / name).write_bytes(joy_face.read_bytes())
    (folder / "notes.txt").write_text(NO_MEDIA["notes.txt"][0], encoding="utf-8")
    (folder / ".DS_Store").write_bytes(b"\0Bud1")
    (folder / "old").mkdir()
    assert cli.main(["predict", str(folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [c["clip"]["source"] for c in result["clips"]] == ["a.jpg", "b.jpg"]
    assert result["failed"] == 0 and result["skipped"] == [".DS_Store", "notes.txt", "old/"]
    notes = result["clips"][0]["clip"]["warnings"]
    assert notes == ["still image: no audio"]
    assert cli.main(["predict", str(folder)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines if not line.startswith(" ")][:2] == ["a.jpg", "b.jpg"]
    assert lines[1:1 + len(notes)] == [f"  note: {note}" for note in notes]
    assert lines[-1] == "skipped, not clips: .DS_Store, notes.txt, old/ (subfolders are not searched)"


def test_python_m_emoweb_help_imports_no_torch() -> None:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "emoweb", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "predict" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "emoweb.cli" in imported and not imported & {"torch", "gradio", "transformers", "scipy.stats"}


def test_every_subcommand_help_says_what_it_prints_and_how_long() -> None:
    parser = cli.build_parser()
    for name, (_, description, _, _) in cli.COMMANDS.items():
        assert " Prints " in description and " Takes " in description, name
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "Takes about 1 s per clip" in sub.choices["eval"].format_help().replace("\n", " ")
    # each action of a command (profile create, clip delete, labels export) says what it does in its own --help
    for name, command in sub.choices.items():
        actions = next((a for a in command._actions if isinstance(a, argparse._SubParsersAction)), None)
        for action, action_parser in (actions.choices.items() if actions else ()):
            assert action_parser.description, f"{name} {action} --help has no description"


def test_deprecated_profile_spelling_still_sets_the_backbones(capsys) -> None:
    for command in (["eval", "m.csv"], ["predict", "x.mp4"], ["train", "emoasst", "--data", "m.csv"], ["inspect", "x.mp4"]):
        args = cli.build_parser().parse_args([*command, "--profile", "paper"])
        assert args.backbones == "paper" and cli.settings_from(args).profile == "paper"
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("note: --profile is deprecated") and "--backbones" in err[0]
        args = cli.build_parser().parse_args([*command, "--backbones", "paper"])
        assert cli.settings_from(args).profile == "paper" and capsys.readouterr().err == ""
    args = cli.build_parser().parse_args(["queue", "--profile", "Anna"])  # the caregiver's profile: no note
    assert args.profile == "Anna" and capsys.readouterr().err == ""


def test_model_names_are_read_once_for_the_cli_and_the_predictor() -> None:
    """`models.named_models`: what `--models` is checked with before anything loads and what the Predictor reads.
    What every output prints (EmoAsst, MER-SEM-MBT) is accepted back, in any case."""
    from models import named_models

    assert named_models(" emoasst, foalnet ,") == ["emoasst", "foalnet"]
    assert named_models("EmoAsst, MER-CLIP,mer-sem-mbt,FOAL-NET,emoasst") == ["emoasst", "merclip", "sem_mbt", "foalnet"]
    with pytest.raises(ValueError, match=r"^unknown model\(s\): bogus, EmoAsts; known: EmoAsst \(emoasst\), MER-CLIP \(merclip\), "
                                         r"MER-SEM-MBT \(sem_mbt\), Foal-Net \(foalnet\), or all$"):
        named_models("bogus,emoasst,EmoAsts")


def test_a_gpu_asked_for_where_there_is_none_is_one_line(monkeypatch, capsys) -> None:
    """`--device cuda` (or EMOWEB_DEVICE=cuda) where torch finds no CUDA GPU: one error line, exit 2, before
    anything loads (it was a 40-line traceback from the first tensor moved there). Made GPU-less on a GPU
    machine too, so the test runs everywhere."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv, env in ((["predict", "--device", "cuda", "--text", "hello"], None),
                      (["predict", "--text", "hello"], "cuda"), (["inspect", str(next(iter(FACES.values()))), "--device", "cuda"], None)):
        if env:
            monkeypatch.setenv("EMOWEB_DEVICE", env)
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["error: device 'cuda': torch finds no CUDA GPU on this machine (use auto or cpu)"]
        monkeypatch.delenv("EMOWEB_DEVICE", raising=False)
    args = cli.build_parser().parse_args(["predict", "x.mp4", "--device", "cpu"])
    assert cli.settings_from(args).device == "cpu"


def _face_manifest(path: Path, split: bool) -> list[str]:
    """The face photos of tests/data (the first one val), plus a row whose file is missing."""
    rows = [{"path": str(p), "label": label, "split": "val" if i == 0 else "train"} for i, (label, p) in enumerate(FACES.items())]
    rows.append({"path": "gone.jpg", "label": "joy", "split": "train"})
    fields = ["path", "label", "split"] if split else ["path", "label"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return [r["label"] for r in rows[:-1]]


def test_encode_reads_only_the_splits_asked_for(tmp_path: Path, monkeypatch, capsys) -> None:
    """`encode --splits val` fills the cache for the validation rows alone (what eval and bench generalise read),
    skipping the training rows' encoding; the default encodes every row."""
    monkeypatch.setenv("EMOWEB_FEATURE_CACHE", str(tmp_path / "features"))
    manifest = tmp_path / "faces.csv"
    n = len(_face_manifest(manifest, split=True))
    assert cli.main(["encode", str(manifest), "--splits", "val"]) == 0
    assert json.loads(capsys.readouterr().out)["encoded"] == 1  # the one val photo; the missing file is a train row
    assert cli.main(["encode", str(manifest)]) == 0
    done = json.loads(capsys.readouterr().out)
    assert (done["encoded"], done["skipped"]) == (n, 1) and "gone.jpg: file not found" in done["reasons"][0]


@pytest.mark.slow
def test_eval_without_split_column_scores_every_row(tmp_path: Path, monkeypatch, capsys) -> None:
    from test_services import card_confidence_levels, make_checkpoint_root

    root = make_checkpoint_root(tmp_path / "checkpoints")
    monkeypatch.setenv("EMOWEB_CHECKPOINT_ROOT", str(root))
    monkeypatch.setenv("EMOWEB_FEATURE_CACHE", str(tmp_path / "features"))
    plain = tmp_path / "plain.csv"
    labels = _face_manifest(plain, split=False)
    n = len(labels)
    assert cli.main(["eval", str(plain), "--models", "emoasst", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "" and result["n"] == n and result["reports"]["emoasst"]["n"] == n
    assert sorted(lab for lab, s in result["reports"]["emoasst"]["support"].items() for _ in range(s)) == sorted(labels)
    assert len(result["skipped"]) == 1 and "gone.jpg: file not found" in result["skipped"][0]
    # the visual backbone's own answer beside the model, on the same rows (issue 18's yardstick)
    from emoweb.learning.evaluation import BACKBONE_REPORT

    assert result["reports"][BACKBONE_REPORT]["n"] == n and result["reports"][BACKBONE_REPORT]["n_pred_outside_labels"] == 0

    assert cli.main(["eval", str(plain), "--models", "emoasst"]) == 0  # text: the skipped row's reason too
    out = capsys.readouterr().out
    assert f"split (every row): rows used {n}, skipped 1" in out and "skipped: gone.jpg: file not found" in out
    assert [line.split(" | ")[0] for line in out.splitlines()[2:4]] == ["| EmoAsst", f"| {BACKBONE_REPORT}"]  # names people read

    split = tmp_path / "split.csv"
    _face_manifest(split, split=True)  # with a split column: val only, unless asked
    assert cli.main(["eval", str(split), "--models", "emoasst", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 1
    assert cli.main(["eval", str(split), "--models", "emoasst", "--split", "", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == n
    assert cli.main(["eval", str(plain), "--models", "emoasst", "--split", "val"]) == 2
    assert f"no rows with split 'val' in {plain}" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_json_leads_with_the_headline(joy_face: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from emoweb.services.headline import RULE, headline
    from test_services import card_confidence_levels, make_checkpoint_root

    root = make_checkpoint_root(tmp_path / "checkpoints")
    monkeypatch.setenv("EMOWEB_CHECKPOINT_ROOT", str(root))
    assert cli.main(["predict", str(joy_face), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert next(iter(result)) == "headline"
    head, models = result["headline"], result["models"]
    votes = [m["label"] for m in models.values()]
    assert head["label"] in votes and head["agree"] == votes.count(head["label"]) and head["models"] == len(models)
    expected = headline({m: o["probs"] for m, o in models.items()}, untrained=result["clip"]["untrained_weights"],
                        confident_at=card_confidence_levels(root))
    assert (head["label"], head["confidence"], head["reason"]) == (expected.label, expected.confidence, expected.reason)
    assert head["rule"] == RULE
    assert cli.main(["predict", str(joy_face)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{joy_face.name}: {head['label']}, {head['confidence']}: {head['reason']}; ")
    assert head["confident"] == list(expected.confident)
    names = {"emoasst": "EmoAsst", "merclip": "MER-CLIP", "sem_mbt": "MER-SEM-MBT", "foalnet": "Foal-Net"}
    for m, o in models.items():  # each model by the name the app shows; each confident one marked in the plain line
        assert f"{names[m]} -> {o['label']} (" in line
        assert (f"{names[m]} -> {o['label']} ({max(o['probs'].values()):.2f}, confident)" in line) == (m in expected.confident)



@pytest.mark.slow
def test_eval_says_which_rows_it_left_out_for_their_label_and_refuses_a_cache_it_cannot_build(tmp_path: Path, monkeypatch,
                                                                                             capsys) -> None:
    """A label the models do not name ('contempt', 'happy') is a skipped row with its reason (such rows went
    in silence); 'Joy' is joy. `--cache K` with no train rows, or K < 0, is one line (a traceback before)."""
    from test_services import make_checkpoint_root

    monkeypatch.setenv("EMOWEB_CHECKPOINT_ROOT", str(make_checkpoint_root(tmp_path / "checkpoints")))
    monkeypatch.setenv("EMOWEB_FEATURE_CACHE", str(tmp_path / "features"))
    manifest = tmp_path / "mine.csv"
    manifest.write_text(f"path,label\n{FACES['joy']},Joy\n{FACES['neutral']},contempt\n{FACES['joy']},happy\n{FACES['joy']},happy\n")
    assert cli.main(["eval", str(manifest), "--models", "emoasst"]) == 0
    out = capsys.readouterr().out
    assert "rows used 1, skipped 3" in out, out
    assert "skipped: label 'contempt' is not one the models name" in out and "skipped: label 'happy' is not one the models name (2 rows)" in out
    assert cli.main(["eval", str(manifest), "--models", "emoasst", "--cache", "4"]) == 2
    assert capsys.readouterr().err == (f"error: --cache 4: {manifest} has no train rows (with a label the models name) "
                                       "to build it from\n")
    assert cli.main(["eval", str(manifest), "--cache", "-3"]) == 2
    assert "--cache -3: give how many labelled clips per label" in capsys.readouterr().err
