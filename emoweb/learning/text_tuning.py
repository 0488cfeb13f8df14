"""Tuning the text backbone's emotion classifier (`python -m emoweb tune-text`) on text-only manifests.

Rows are split by `split_of` with the seed and dev share of the models' own recipes: the dev
speakers (MELD dialogues, GoEmotions comments) a model's training leaves out to stop and to fit its
calibration are left out here too, so the classifier's decision on them is an unseen one. Plain
cross-entropy on each corpus's own label mix (MELD's weighted F1 rewards it; a model's text head and
calibration weigh the decision afterwards), with at most `rows_per_manifest` training rows from each
manifest, so that GoEmotions' 37k comments do not drown MELD's 8k lines of conversation.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict
from typing import Callable

import torch
from torch import nn

from emoweb.config import TextTuningRecipe
from emoweb.learning.manifests import Row
from emoweb.learning.metrics import classification_report
from emoweb.learning.training import split_of
from models import LABEL7
from models.backbones.text_emotion import TextEmotionClassifier


def split_rows(rows: list[Row], recipe: TextTuningRecipe) -> tuple[list[Row], list[Row]]:
    """(training rows, at most `rows_per_manifest` per manifest, seeded; dev rows) of the text rows in
    LABEL7; the manifests' own validation rows are in neither."""
    rng = random.Random(recipe.seed)
    train: dict[str, list[Row]] = {}
    dev: list[Row] = []
    for r in rows:
        if r.modality != "text" or r.label not in LABEL7 or not r.text:
            continue
        split = split_of(r, recipe.seed, recipe.dev_fraction)
        if split == "train":
            train.setdefault(r.manifest, []).append(r)
        elif split == "dev":
            dev.append(r)
    kept = [r for items in train.values() for r in rng.sample(items, min(len(items), recipe.rows_per_manifest))]
    return kept, dev


@torch.no_grad()
def dev_reports(model: TextEmotionClassifier, dev: list[Row], batch_size: int = 128) -> dict[str, dict]:
    """{manifest: classification_report} of the classifier on `dev`, per manifest."""
    was_training = model.training
    model.eval()
    out = {}
    for manifest in sorted({r.manifest for r in dev}):
        rows = [r for r in dev if r.manifest == manifest]
        pred = []
        for i in range(0, len(rows), batch_size):
            pred += [model.labels[j] for j in model([r.text for r in rows[i:i + batch_size]]).argmax(-1).tolist()]
        out[manifest] = classification_report([r.label for r in rows], pred, model.labels)
    model.train(was_training)
    return out


def tune(rows: list[Row], recipe: TextTuningRecipe, progress: Callable[[str], None] = print) -> tuple[TextEmotionClassifier, dict]:
    """Tune a `TextEmotionClassifier` over LABEL7 on `rows`' training split; returns it (eval mode) and a
    card {"recipe", "rows", "dev", "seconds"} with each manifest's dev report after every epoch.
    Raises ValueError when no training row is left."""
    train, dev = split_rows(rows, recipe)
    if not train:
        raise ValueError("no text training rows: give text-only manifests (MELD's CSV, GoEmotions' TSV)")
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    model = TextEmotionClassifier(LABEL7, recipe.tuned_layers).train()
    params = model.trainable_parameters()
    head = [p for n, p in params.items() if n.startswith("classifier.")]
    body = [p for n, p in params.items() if not n.startswith("classifier.")]
    opt = torch.optim.AdamW([{"params": body, "lr": recipe.lr}, {"params": head, "lr": recipe.head_lr}], weight_decay=0.01)
    steps_per_epoch = max(1, len(train) // recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[recipe.lr, recipe.head_lr],
                                                total_steps=recipe.epochs * steps_per_epoch, pct_start=0.1)
    index = {label: i for i, label in enumerate(LABEL7)}
    t0, history = time.perf_counter(), []
    for epoch in range(recipe.epochs):
        order = rng.sample(train, len(train))
        for step in range(steps_per_epoch):
            batch = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            loss = nn.functional.cross_entropy(model([r.text for r in batch]), torch.tensor([index[r.label] for r in batch]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % 100 == 0:
                progress(f"epoch {epoch + 1}/{recipe.epochs} step {step}/{steps_per_epoch} loss {loss.item():.3f}")
        reports = dev_reports(model, dev)
        history.append({m: {k: r[k] for k in ("n", "accuracy", "weighted_f1", "uar")} for m, r in reports.items()})
        progress(f"epoch {epoch + 1}: dev " + ", ".join(f"{m} weighted F1 {r['weighted_f1']:.3f}" for m, r in history[-1].items()))
    card = {"recipe": asdict(recipe), "rows": {"train": len(train), "dev": len(dev)}, "dev": history,
            "seconds": round(time.perf_counter() - t0, 1)}
    return model.eval(), card
