"""Evaluate models on a labelled manifest: the numbers behind README tables and `eval --json`.

Features come from the FeatureStore (each clip encoded once). With `cache_k`, a K-shot cache per
model is built from the manifest's *train* rows and its alpha/beta tuned by cross-validation on
those rows only; evaluation rows never touch it. With `composites`, the rows scored are composites
of the split's speech clips and face photos of the same label (`emoweb.learning.pairs`: the data has no real
audio-visual clip), which is how the fused path of the models is measured.
"""
from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import replace

import torch

from emoweb.config import Settings
from emoweb.errors import EmoWebError
from emoweb.learning.manifests import read_manifests
from emoweb.learning.metrics import NO_DECISION, classification_report
from emoweb.learning.pairs import composite_samples
from emoweb.learning.training import Sample
from emoweb.pipeline.batching import to_input
from emoweb.pipeline.featstore import FeatureStore
from emoweb.pipeline.inference import Predictor
from emoweb.services import cachearrays, cachebuild
from models.cache import FewShotCache


def k_shot(items: list, k: int, seed: int = 0) -> list:
    """Up to k items per label, seeded: the K-shot set of the cache."""
    rng = random.Random(seed)
    by_label: dict[str, list] = {}
    for item in items:
        by_label.setdefault(item[0].label, []).append(item)
    return [x for label in sorted(by_label) for x in rng.sample(by_label[label], min(k, len(by_label[label])))]


@torch.no_grad()
def build_cache(predictor: Predictor, name: str, items: list) -> FewShotCache:
    """Cache keys = the model's fused and per-modality embeddings of labelled items; built and tuned by the
    app's own rebuild (`cachebuild.build`), so `eval --cache` scores the cache a caregiver would get."""
    model, _ = predictor.model(name)
    dims = predictor.backbones.dims
    keys: dict[str, list[torch.Tensor]] = {}
    base = []
    for i in range(0, len(items), 128):
        chunk = items[i : i + 128]
        out = model(to_input([f for _, f in chunk], dims), predictor.labels)
        base.append(out.logits)
        for m, z in {cachearrays.FUSED: out.embedding, **out.modality_embeddings}.items():
            present = torch.ones(len(chunk), dtype=torch.bool) if m == cachearrays.FUSED else torch.tensor([f.modalities.get(m, True) for _, f in chunk])  # extra keys: zero rows are missing
            keys.setdefault(m, []).append(torch.where(present.unsqueeze(1), z, torch.full_like(z, float("nan"))))
    data = cachebuild.assemble_arrays([r.label for r, _ in items], {m: torch.cat(v) for m, v in keys.items()}, torch.cat(base))
    return cachebuild.build(name, data, predictor.labels).cache


def named_rows(rows: list, labels: Sequence[str]) -> tuple[list, list[str]]:
    """The rows whose label is one the models name, spelt as they spell it ("Joy" is joy), and why each other
    row is left out ("label 'contempt' is not one the models name"): said, never dropped in silence."""
    known = {label.casefold(): label for label in labels}
    named, unnamed = [], []
    for r in rows:
        label = known.get(r.label.strip().casefold())
        if label is None:
            unnamed.append(f"label {r.label!r} is not one the models name")
        else:
            named.append(r if r.label == label else replace(r, label=label))
    return named, unnamed


def composite_items(items: list) -> list:
    """(row, features) of one composite per speech clip: a face photo of the same label and split
    (seeded), so the same manifests always give the same pairs."""
    return [(c.row, c.features) for c in composite_samples([Sample(r, f, r.split) for r, f in items], seed=0)]


def default_split(rows: list) -> str:
    """'val' when the manifest names splits, else '' (every row): a manifest without a split column
    is a test set of its own."""
    return "val" if any(r.split for r in rows) else ""


BACKBONE_REPORT = "visual backbone (its own output)"


def backbone_label(feats) -> str:
    """The visual backbone's own answer (the FER network's 7 logits, averaged over the clip's face crops),
    or "no face" (an error in the report) when no face was found: what a trained visual path must beat."""
    if feats.visual_logits is None or not len(feats.visual_logits):
        return "no face"
    return feats.visual_logit_labels[int(feats.visual_logits.float().mean(0).argmax())]


def evaluate_manifest(
    settings: Settings, manifest: str, models: str = "all", split: str | None = None, cache_k: int = 0, composites: bool = False,
    rows: list | None = None,
) -> dict:
    """Per-model reports on `split`'s rows (None: `default_split`; '': every row). `rows`: the manifest
    already read (else read here). Raises EmoWebError when no model has a checkpoint or no row is left."""
    predictor = Predictor(settings)
    names = predictor.model_names(models)
    if not names:
        raise EmoWebError(f"no trained model is available for the {settings.profile!r} backbone set")
    store = FeatureStore(predictor.extractor, settings.feature_cache)
    rows = read_manifests(manifest) if rows is None else rows
    if split is None:
        split = default_split(rows)
    wanted, unnamed = named_rows([r for r in rows if not split or r.split == split], predictor.labels)
    if not wanted:
        raise EmoWebError((f"no rows with split {split!r} in {manifest}" if split else f"no labelled rows in {manifest}")
                          + (f" whose label the models name ({', '.join(predictor.labels)})" if unnamed else ""))
    train = named_rows([r for r in rows if r.split == "train"], predictor.labels)[0] if cache_k else []
    if cache_k and not train:
        raise EmoWebError(f"--cache {cache_k}: {manifest} has no train rows (with a label the models name) to build it from")
    items, skipped = store.encode_rows(wanted, desc="features")
    skipped = unnamed + skipped
    if composites:
        items = composite_items(items)
        if not items:
            raise EmoWebError(f"no composites: {manifest} has no speech clip and face photo with the same label in split {split!r}")
    caches = {}
    if cache_k:
        train_items, _ = store.encode_rows(train, desc="cache features")
        caches = {n: build_cache(predictor, n, k_shot(train_items, cache_k)) for n in names}
    preds: dict[str, list[str]] = {n: [] for n in names}
    latency: dict[str, float] = {n: 0.0 for n in names}
    for _, feats in items:
        result = predictor.run_models(feats, names, caches)
        for n in names:
            preds[n].append(result.outputs[n].label if result.model_decided(n) else NO_DECISION)
            latency[n] += result.latency[n]
    truth = [r.label for r, _ in items]
    reports = {}
    for n in names:
        reports[n] = classification_report(truth, preds[n], predictor.labels)
        reports[n]["latency_ms_per_clip"] = round(1000 * latency[n] / max(1, len(items)), 3)
    if any(feats.visual_logits is not None for _, feats in items):  # the yardstick every visual path must reach
        reports[BACKBONE_REPORT] = classification_report(truth, [backbone_label(f) for _, f in items], predictor.labels)
    return {
        "manifest": manifest, "split": split, "composites": composites, "cache_k": cache_k, "profile": predictor.backbones.name,
        "n": len(items), "skipped": skipped, "reports": reports,
        "cache": {n: {"size": len(c), "alpha": c.alpha, "beta": c.beta, "adapter": c.adapter is not None} for n, c in caches.items()},
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
    }
