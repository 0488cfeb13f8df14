"""`python -m emoweb bench loco`: leave-one-corpus-out for speech.

Why: a validation split shares its corpus's studio, microphones, sentences and acting style with the
training split, so in-corpus validation numbers overstate how a recipe meets a new recording (issue 21).
For each model, the shipped card's recipe (its `command`) is trained again once per speech corpus X
with X's manifest left out (the faces, text and other speech corpora stay), and the fold is scored on
every row of X: no speaker, sentence or microphone of X was seen. The shipped checkpoint's score on X's
validation split stands beside it for reference. Folds are trained by the `train` command itself, one
process at a time (memory), into a folder per fold; a fold whose card holds the planned recipe is
scored, not trained again, so an interrupted run resumes.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from emoweb.config import REPO_ROOT, SHARED_DATA, Settings
from emoweb.errors import EmoWebError
from emoweb.learning.generalise import SPEECH, corpus_items, pct, score
from emoweb.learning.studies import acted_speech_store
from emoweb.pipeline.inference import Predictor, shipped_root
from models import MODELS, registry

METRICS = ("accuracy", "uar", "weighted_f1", "ece")


@dataclass(frozen=True)
class Fold:
    """One model trained without one speech corpus. `argv`: the `train` arguments (after `python -m
    emoweb`), the card's recipe with the corpus's manifest removed from `--data`; `root`: its checkpoint root."""

    model: str
    corpus: str
    argv: tuple[str, ...]
    root: Path
    profile: str

    @property
    def recipe(self) -> str:
        """The command as `train` writes it into the fold's card."""
        return " ".join(("python", "-m", "emoweb", *self.argv))

    @property
    def manifests(self) -> list[str]:
        """The manifests the fold trains on, as the recipe spells them (relative to the repository root)."""
        return self.argv[self.argv.index("--data") + 1].split(",")

    def done(self) -> bool:
        """True when the fold's checkpoint exists and its card was trained with this very recipe."""
        weights, card = registry.checkpoint_paths(self.model, self.profile, self.root)
        return weights.is_file() and card.is_file() and json.loads(card.read_text()).get("command") == self.recipe


def _resolve(manifest: str) -> Path:
    """A card's manifest path: relative ones are relative to the repository root, where `train` ran."""
    path = Path(manifest)
    return (path if path.is_absolute() else REPO_ROOT / path).resolve()


def plan_folds(model: str, card: dict, root: Path, corpora: dict[str, Path]) -> list[Fold]:
    """One fold per corpus of `corpora` ({name: manifest}) that the card's recipe trains on, in that
    order, each under `root/<model>/without-<name>`. Raises EmoWebError when the card has no `train`
    command, a manifest it names is missing, or it trains on none of `corpora`."""
    argv = shlex.split(card.get("command", ""))
    if argv[:5] != ["python", "-m", "emoweb", "train", model] or "--data" not in argv:
        raise EmoWebError(f"{model}: its card has no 'python -m emoweb train {model} --data ...' command to retrain")
    argv = argv[3:]
    at = argv.index("--data") + 1
    manifests = argv[at].split(",")
    missing = [m for m in manifests if not _resolve(m).is_file()]
    if missing:
        raise EmoWebError(f"{model}: the manifest(s) its recipe trains on are missing: {', '.join(missing)}")
    profile = argv[argv.index("--backbones") + 1] if "--backbones" in argv else card.get("profile", "embedded")
    folds = []
    for name, path in corpora.items():
        rest = [m for m in manifests if _resolve(m) != path.resolve()]
        if len(rest) < len(manifests):
            fold_argv = (*argv[:at], ",".join(rest), *argv[at + 1 :])
            folds.append(Fold(model, name, fold_argv, root / model / f"without-{name}", profile))
    if not folds:
        raise EmoWebError(f"{model}: its recipe trains on none of the speech corpora ({', '.join(corpora)}): nothing to leave out")
    return folds


def train_fold(fold: Fold, threads: int) -> None:
    """Train the fold with the `train` command in its own process (its memory is given back at the end);
    its output goes to stderr, so `--json` stays one document. Raises EmoWebError when it fails."""
    env = {**os.environ, "EMOWEB_THREADS": str(threads)}
    print(f"loco: training {fold.model} without {fold.corpus} into {fold.root}", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", "emoweb", *fold.argv, "--out", str(fold.root)], cwd=REPO_ROOT, env=env,
                          stdout=sys.stderr, check=False)
    if done.returncode != 0 or not fold.done():
        raise EmoWebError(f"{fold.model} without {fold.corpus}: training failed (exit {done.returncode}); see the log above")


def speech_corpora() -> dict[str, Path]:
    """{name: manifest} of the shared speech corpora; EmoWebError naming any that is missing."""
    corpora = {name: SHARED_DATA / rel for name, rel in SPEECH.items()}
    missing = [f"{name} ({path})" for name, path in corpora.items() if not path.is_file()]
    if missing:
        raise EmoWebError(f"speech corpus manifest(s) missing: {', '.join(missing)}; leave-one-corpus-out needs every one")
    return corpora


def shipped_card(model: str, profile: str) -> dict:
    """The shipped checkpoint's card (its recipe); EmoWebError for an unknown model or one without a checkpoint."""
    if model not in MODELS:
        raise EmoWebError(f"unknown model: {model}; known: {', '.join(MODELS)}")
    weights, card = registry.checkpoint_paths(model, profile, shipped_root())
    if not weights.is_file() or not card.is_file():
        raise EmoWebError(f"no shipped {model} checkpoint for the {profile!r} backbone set in {card.parent}: its card holds the recipe to retrain")
    return json.loads(card.read_text())


def _mean(reports: list[dict]) -> dict:
    return {k: sum(r[k] for r in reports) / len(reports) for k in METRICS}


def loco(settings: Settings, models: str, root: Path | None = None, threads: int = 2) -> dict:
    """{"models": {model: {"recipe", "folds": {corpus: {"n", "n_val", "trained", "command", "held_out": report,
    "in_corpus_val": report}}, "mean": {"held_out", "in_corpus_val"}}}}. `models`: comma-separated names
    or 'all' (every model with a shipped checkpoint); `root`: the folds' folder (default: `loco` beside the
    feature cache). Reports as `bench generalise` gives them (accuracy, UAR, weighted F1, ECE with the
    fold's own calibration, and before it). Every missing fold is trained before anything is scored."""
    root = Path(root or settings.feature_cache.parent / "loco")
    names = [n for n in MODELS if registry.checkpoint_paths(n, settings.profile, shipped_root())[0].is_file()] if models == "all" else \
        [n.strip() for n in models.split(",") if n.strip()]
    if not names:
        raise EmoWebError("no model to leave corpora out for: give --models NAMES")
    cards = {n: shipped_card(n, settings.profile) for n in names}
    corpora = speech_corpora()
    plans = {n: (card, plan_folds(n, card, root, corpora)) for n, card in cards.items()}
    trained = set()
    for _, folds in plans.values():
        for fold in folds:
            if not fold.done():
                train_fold(fold, threads)
                trained.add(fold)
    predictor = Predictor(settings)
    store = acted_speech_store(predictor, settings)
    dims = predictor.backbones.dims
    result: dict = {"backbones": predictor.backbones.name, "root": str(root), "models": {}}
    items: dict[str, tuple[list, list]] = {}  # corpus -> (every row, its val rows), read once for every model
    for name, (card, folds) in plans.items():
        shipped, _ = predictor.model(name)
        entry: dict = {"recipe": card["command"], "folds": {}}
        for fold in folds:
            if fold.corpus not in items:
                items[fold.corpus] = corpus_items(store, SPEECH[fold.corpus], split=None), corpus_items(store, SPEECH[fold.corpus])
            every, val = items[fold.corpus]
            model, _ = registry.load(name, fold.profile, fold.root)
            model.attach_text_encoder(predictor.encode_text, predictor.backbones.text_encoder)
            entry["folds"][fold.corpus] = {
                "n": len(every), "n_val": len(val), "trained": fold in trained, "command": fold.recipe, "checkpoint": str(fold.root),
                "held_out": score(model.to(predictor.backbones.device), every, dims)["fused"],
                "in_corpus_val": score(shipped, val, dims)["fused"],
            }
        entry["mean"] = {k: _mean([f[k] for f in entry["folds"].values()]) for k in ("held_out", "in_corpus_val")}
        result["models"][name] = entry
    return result


def loco_text(r: dict) -> str:
    """Markdown: per model and held-out corpus, the fold's scores on every row of it beside the shipped
    checkpoint's on its validation split, then the means over corpora."""
    lines = [f"Leave-one-corpus-out, speech (folds in {r['root']}): trained without the corpus, scored on all its rows; "
             "beside it the shipped checkpoint on the corpus's validation split", "",
             "| model | held-out corpus | n | accuracy | UAR | weighted F1 | ECE | shipped, val split: accuracy | UAR | weighted F1 | ECE |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, entry in r["models"].items():
        rows = [(c, f["n"], f["held_out"], f["in_corpus_val"]) for c, f in entry["folds"].items()]
        rows.append(("mean", "", entry["mean"]["held_out"], entry["mean"]["in_corpus_val"]))
        for corpus, n, out, val in rows:
            lines.append(f"| {model} | {corpus} | {n} | " + " | ".join(pct(out[k]) for k in METRICS) + " | "
                         + " | ".join(pct(val[k]) for k in METRICS) + " |")
    return "\n".join(lines)
