"""Model cards (`python -m emoweb cards`): the committed docs/models files are what the JSON cards give, a
changed JSON card is caught by `--check` with the stale file named, and the command reads JSON only."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emoweb import cli
from emoweb.cli import cards

REPO = Path(__file__).resolve().parents[1]


def _copy_cards(tmp_path: Path) -> Path:
    """The committed JSON cards (not the weights) under a temp checkpoint root."""
    root = tmp_path / "checkpoints"
    for path in cards.card_paths():
        (root / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / path.parent.name / path.name)
    return root


def _card_after(tmp_path: Path, model: str, edit) -> str:
    """The model card generated from a copy of `model`'s committed JSON card after `edit(card)` changed it."""
    root, out = _copy_cards(tmp_path), tmp_path / "models"
    card_path = root / "embedded" / f"{model}.json"
    card = json.loads(card_path.read_text())
    edit(card)
    card_path.write_text(json.dumps(card, indent=2))
    assert cli.main(["cards", "--checkpoints", str(root), "--out", str(out)]) == 0
    return (out / f"{model}.md").read_text()


def test_committed_model_cards_are_what_the_json_cards_give(tmp_path: Path) -> None:
    out = tmp_path / "models"
    assert cli.main(["cards", "--out", str(out)]) == 0
    generated = {p.name: p.read_text(encoding="utf-8") for p in out.glob("*.md")}
    committed = {p.name: p.read_text(encoding="utf-8") for p in cards.CARDS_DIR.glob("*.md")}
    assert sorted(generated) == sorted(committed) == sorted(f"{p.stem}.md" for p in cards.card_paths())
    for name, text in generated.items():
        assert committed[name] == text, f"docs/models/{name} is stale: run python -m emoweb cards"
    assert cli.main(["cards", "--check"]) == 0


def test_a_changed_json_card_is_named_stale_and_regenerated_with_its_numbers(tmp_path: Path, capsys) -> None:
    root, out = _copy_cards(tmp_path), tmp_path / "models"
    assert cli.main(["cards", "--checkpoints", str(root), "--out", str(out)]) == 0
    capsys.readouterr()
    card_path = root / "embedded" / "merclip.json"
    card = json.loads(card_path.read_text())
    audio = card["metrics"]["val"]["audio"]
    audio["accuracy"] = 0.9876
    row = (f"| val | audio: the audio branch's own answer, rows with a voice | {audio['n']:,} | 98.8 | "
           f"{100 * audio['weighted_f1']:.1f} | {100 * audio['uar']:.1f} |")
    card_path.write_text(json.dumps(card, indent=2))

    assert cli.main(["cards", "--checkpoints", str(root), "--out", str(out), "--check"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("stale:")] == [
        f"stale: {out / 'merclip.md'} (run python -m emoweb cards)"]
    assert row not in (out / "merclip.md").read_text()  # --check writes nothing

    assert cli.main(["cards", "--checkpoints", str(root), "--out", str(out)]) == 0
    assert f"written: {out / 'merclip.md'}" in capsys.readouterr().out
    text = (out / "merclip.md").read_text()
    assert row in text
    assert "{type: accuracy, value: 98.8, name: \"accuracy\"}" in text
    assert cli.main(["cards", "--checkpoints", str(root), "--out", str(out), "--check"]) == 0


def test_a_recipe_choice_in_the_card_is_shown_with_its_dev_runs(tmp_path: Path) -> None:
    choices = [{"choice": "the audio tokens", "option": "--audio-source", "kept": "audio",
                        "dev_mean_uar": {"audio": 0.5912, "whisper_layer4": 0.5801}},
                       {"choice": "the built clips", "option": "--built-clips", "kept": "own", "basis": "although `corpus` scored higher",
                        "dev_mean_uar": {"own": 0.5, "corpus": 0.6}, "note": "Its attention went flat."}]
    text = _card_after(tmp_path, "foalnet", lambda card: card.update(choices=choices))
    assert ("Chosen: the audio tokens, kept `audio` on the mean UAR over the dev corpora (`audio` 0.591, "
            "`whisper_layer4` 0.580; each run is the command above with `--audio-source` set to that value).") in text
    assert ("Chosen: the built clips, kept `own` although `corpus` scored higher (`own` 0.500, `corpus` 0.600; each run is the "
            "command above with `--built-clips` set to that value). Its attention went flat.") in text


def test_the_card_says_how_far_its_smallest_validation_corpus_could_move_by_chance(tmp_path: Path) -> None:
    def two_corpora(card: dict) -> None:
        val = {k: m for k, m in card["metrics"]["val"].items() if not k.startswith("corpus ")}
        val["corpus ravdess/manifest.csv"] = {"n": 240, "accuracy": 181 / 240, "uar": 0.75, "weighted_f1": 0.75}
        val["corpus cremad/manifest.csv"] = {"n": 1545, "accuracy": 0.679, "uar": 0.68, "weighted_f1": 0.68}
        card["metrics"]["val"] = val

    # Wilson score interval for 181 of 240 at z = 1.96: centre 0.7502, half-width 0.0542
    assert ("- The smallest validation corpus, ravdess, has 240 rows: its accuracy of 75.4 % has a 95 % "
            "interval of 69.6-80.4 %: a change inside it can be chance alone.") in _card_after(tmp_path, "emoasst", two_corpora)


def test_a_card_names_corpora_plainly_and_only_those_the_model_used(tmp_path: Path) -> None:
    def weak_labels(card: dict) -> None:
        labels = card["labels"]
        for corpus, label, recall, rows in (("facial_expressions", "fear", 0.0, 3), ("tess", "joy", 0.01, 200)):
            m = card["metrics"]["val"][f"corpus {corpus}/manifest.csv"]
            m["per_class_recall"][label] = recall
            m["confusion"][labels.index(label)] = [rows] + [0] * (len(labels) - 1)

    text = _card_after(tmp_path, "emoasst", weak_labels)
    front = text.split("---")[1]
    # EmoAsst has no trained text path: MELD and GoEmotions rows were skipped, so they are not its datasets
    assert "- ravdess" in front and "- meld" not in front and "- goemotions_ekman" not in front
    assert 'name: "ravdess, validation split"' in front  # a corpus's result names that corpus alone
    assert "| val | ravdess: the model's answer on that corpus's rows | 240 |" in text
    assert "corpus ravdess/manifest.csv" not in text
    limits = next(line for line in text.splitlines() if line.startswith("- Weak on `val`"))
    assert "joy by the tess answer (1.0 % recall of 200 rows)" in limits
    assert "by the facial_expressions answer" not in limits  # 3 validation rows say nothing about a label


def test_a_removed_checkpoint_leaves_no_card_behind_and_a_hand_written_page_is_kept(tmp_path: Path, capsys) -> None:
    root, out = _copy_cards(tmp_path), tmp_path / "models"
    assert cli.main(["cards", "--checkpoints", str(root), "--out", str(out)]) == 0
    (out / "README.md").write_text("# hand-written index\n")
    (root / "embedded" / "foalnet.json").unlink()
    capsys.readouterr()
    assert cli.main(["cards", "--checkpoints", str(root), "--out", str(out), "--check"]) == 1
    assert f"stale: {out / 'foalnet.md'}" in capsys.readouterr().out
    assert cli.main(["cards", "--checkpoints", str(root), "--out", str(out)]) == 0
    assert f"removed: {out / 'foalnet.md'}" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.md")) == ["README.md", "emoasst.md", "merclip.md", "sem_mbt.md"]


def test_a_card_of_another_backbone_set_gets_its_own_file(tmp_path: Path) -> None:
    root, out = _copy_cards(tmp_path), tmp_path / "models"
    card = json.loads((root / "embedded" / "emoasst.json").read_text())
    (root / "paper").mkdir()
    (root / "paper" / "emoasst.json").write_text(json.dumps({**card, "profile": "paper"}))
    assert cli.main(["cards", "--checkpoints", str(root), "--out", str(out)]) == 0
    paper = (out / "emoasst-paper.md").read_text()
    assert "# EmoAsst (`paper` backbones)" in paper and "none is shipped" in paper
    assert "# EmoAsst (`embedded` backbones)" in (out / "emoasst.md").read_text()


@pytest.mark.parametrize("content, error", [
    ("{not json", "not valid JSON (line 1"),
    ('{"model": "emoasst"}', "not a checkpoint card (missing profile, labels, data, metrics, command)"),
    ("[1, 2]", "not a checkpoint card (missing model,"),
])
def test_a_broken_json_card_is_one_line_naming_the_file(tmp_path: Path, content: str, error: str, capsys) -> None:
    root = tmp_path / "checkpoints" / "embedded"
    root.mkdir(parents=True)
    (root / "emoasst.json").write_text(content)
    assert cli.main(["cards", "--checkpoints", str(root.parent), "--out", str(tmp_path / "models")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {root / 'emoasst.json'}: ") and error in err and "\n" not in err
    assert not (tmp_path / "models").exists()


def test_cards_reads_json_only_no_torch() -> None:
    probe = ("import sys\nfrom emoweb import cli\nrc = cli.main(['cards', '--check'])\n"
             "print(sorted(m for m in ('torch', 'gradio', 'models.registry') if m in sys.modules), rc)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[] 0", done.stderr
