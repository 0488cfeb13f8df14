"""Leave-one-corpus-out planning (`bench loco`): which manifests each fold trains on, that the held-out
corpus's rows never reach its training data however the card spells the manifest's path, that a finished
fold is reused only when its card holds the same recipe, and the one-line errors. No training runs here:
a fold is the `train` command itself (tested with the models)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from conftest import FACES, VOICES
from emoweb import cli
from emoweb.config import REPO_ROOT
from emoweb.errors import EmoWebError
from emoweb.learning.loco import plan_folds, shipped_card
from emoweb.learning.manifests import read_manifest, read_manifests
from models import registry

RECIPE = "--seed 0 --epochs 15 --patience 3 --batch-size 64 --epoch-rows 1500 --ema 0.0 --dev-fraction 0.15"


def _manifest(path: Path, clips: dict[str, Path]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker", "split"])
        writer.writeheader()
        writer.writerows({"path": str(p), "label": label, "speaker": p.stem[:4], "split": "train"} for label, p in clips.items())
    return path


@pytest.fixture()
def corpora(tmp_path: Path) -> dict[str, Path]:
    """Two speech 'corpora' (two voices each, from tests/data) and one face set."""
    voices = list(VOICES.items())
    return {"A": _manifest(tmp_path / "a.csv", dict(voices[:2])), "B": _manifest(tmp_path / "b.csv", dict(voices[2:])),
            "faces": _manifest(tmp_path / "faces.csv", FACES)}


def _card(*manifests: str | Path) -> dict:
    return {"command": f"python -m emoweb train foalnet --backbones embedded --data {','.join(map(str, manifests))} {RECIPE}"}


def test_each_fold_trains_the_recipe_without_its_corpus_and_none_of_its_rows(corpora: dict[str, Path], tmp_path: Path) -> None:
    a, b, faces = corpora["A"], corpora["B"], corpora["faces"]
    a_as_card_spells_it = os.path.relpath(a, REPO_ROOT)  # the shipped cards name manifests relative to the repository
    folds = plan_folds("foalnet", _card(a_as_card_spells_it, b, faces), tmp_path / "loco", {"A": a, "B": b})
    assert [f.corpus for f in folds] == ["A", "B"]
    assert folds[0].manifests == [str(b), str(faces)] and folds[1].manifests == [a_as_card_spells_it, str(faces)]
    assert folds[0].recipe == f"python -m emoweb train foalnet --backbones embedded --data {b},{faces} {RECIPE}"
    assert folds[0].root == tmp_path / "loco" / "foalnet" / "without-A" and folds[0].profile == "embedded"
    for fold in folds:
        held_out = {r.path.resolve() for r in read_manifest(corpora[fold.corpus])}
        trained_on = {r.path.resolve() for r in read_manifests(",".join(str(REPO_ROOT / m) for m in fold.manifests))}
        assert held_out and trained_on and not held_out & trained_on


def test_only_the_corpora_the_recipe_trains_on_get_a_fold(corpora: dict[str, Path], tmp_path: Path) -> None:
    folds = plan_folds("foalnet", _card(corpora["B"], corpora["faces"]), tmp_path, {"A": corpora["A"], "B": corpora["B"]})
    assert [f.corpus for f in folds] == ["B"] and folds[0].manifests == [str(corpora["faces"])]


def test_a_finished_fold_is_reused_only_with_the_same_recipe(corpora: dict[str, Path], tmp_path: Path) -> None:
    fold = plan_folds("foalnet", _card(corpora["A"], corpora["faces"]), tmp_path, {"A": corpora["A"]})[0]
    weights, card = registry.checkpoint_paths("foalnet", "embedded", fold.root)
    assert not fold.done()
    card.parent.mkdir(parents=True)
    card.write_text(json.dumps({"command": fold.recipe}))
    assert not fold.done()  # a card without weights: the training stopped before it saved
    weights.write_bytes(b"")
    assert fold.done()
    card.write_text(json.dumps({"command": fold.recipe.replace("--epochs 15", "--epochs 20")}))
    assert not fold.done()  # trained with another recipe: trained again


@pytest.mark.parametrize("card, message", [
    ({"command": "python -m emoweb train merclip --data x.csv"}, "foalnet: its card has no 'python -m emoweb train foalnet --data ...' command"),
    ({}, "foalnet: its card has no"),
    (_card("/nonexistent/gone.csv"), "foalnet: the manifest(s) its recipe trains on are missing: /nonexistent/gone.csv"),
])
def test_a_card_that_cannot_be_retrained_is_a_clear_error(card: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(EmoWebError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        plan_folds("foalnet", card, tmp_path, {})


def test_a_recipe_without_any_speech_corpus_is_a_clear_error(corpora: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EmoWebError, match="recipe trains on none of the speech corpora \\(A\\): nothing to leave out"):
        plan_folds("foalnet", _card(corpora["faces"]), tmp_path, {"A": corpora["A"]})


def test_unknown_model_is_one_line_before_any_training(capsys) -> None:
    with pytest.raises(EmoWebError, match="^unknown model: nope; known: "):
        shipped_card("nope", "embedded")
    assert cli.main(["bench", "loco", "--models", "nope", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown model(s): nope; known: ")


def test_missing_speech_corpora_are_named(tmp_path: Path, monkeypatch) -> None:
    from emoweb.learning import loco

    monkeypatch.setattr(loco, "SHARED_DATA", tmp_path)
    (tmp_path / "speech" / "tess").mkdir(parents=True)
    _manifest(tmp_path / "speech" / "tess" / "manifest.csv", VOICES)
    with pytest.raises(EmoWebError, match=r"^speech corpus manifest\(s\) missing: RAVDESS \(.*\), CREMA-D \(.*\); leave-one-corpus-out needs every one$"):
        loco.speech_corpora()
