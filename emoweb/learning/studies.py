"""Reproducible studies behind README numbers (run through `python -m emoweb bench ...`).

- `kshot_study`: the caregiver effect. For each held-back speaker, K of that speaker's clips per class
  go into the few-shot cache and the speaker's remaining clips are scored, with and without the cache.
  The cache is built by the app's own rebuild code, so the study measures what a caregiver gets.
- `egemaps_baseline`: the classic peer, openSMILE eGeMAPS functionals + logistic regression, trained
  on the same train speakers and scored on the same validation speakers as the models.
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from emoweb.config import Settings
from emoweb.errors import EmoWebError
from emoweb.learning.augment import AudioAugment
from emoweb.learning.manifests import read_manifest
from emoweb.learning.metrics import classification_report
from emoweb.learning.training import Sample, evaluate, split_of, train
from emoweb.pipeline.batching import to_input
from emoweb.pipeline.featstore import FeatureStore
from emoweb.pipeline.features import FeatureExtractor
from emoweb.pipeline.inference import Predictor
from emoweb.services import cachebuild
from models import registry
from models.cache import logit_spread

KSHOT_MODELS = ("emoasst", "merclip", "sem_mbt", "foalnet")


@torch.no_grad()
def _embed(model: torch.nn.Module, dims: dict[str, int], labels: list[str], feats: list) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Base logits and the cache keys the app stores and queries (`inference.apply_cache`): the fused
    embedding and every per-modality key the clips have."""
    out = model(to_input(feats, dims), labels)
    keys = {"fused": out.embedding, **out.modality_embeddings}
    return out.logits, {m: k for m, k in keys.items() if bool(k.any())}


def _speaker_trials(model_name: str, logits: torch.Tensor, keys: dict[str, torch.Tensor], labels: list[str],
                    label_set: list[str], k: int, seeds: int, fixed: tuple[float, float] | None = None) -> dict:
    """Accuracy on the speaker's clips not in the cache, averaged over seeded K-shot draws. Each cache is
    built by the app's own rebuild (`cachebuild.build`): careful mode, or (2+ clips per label) the cache's
    alpha/beta or the fitted adapter chosen by leave-one-out on the cached clips; never the scored clips.
    "adapter": the share of draws whose rebuild switched the fitted adapter on. `fixed` = (alpha in units
    of the cached clips' logit spread, beta) replaces that choice and leaves the adapter off (a cache alone)."""
    with_cache, without, chosen, fitted = [], [], [], []
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(i)
    for seed in range(seeds):
        rng = random.Random(seed)
        shots = [i for idxs in by_label.values() for i in rng.sample(idxs, min(k, len(idxs) - 1))]
        rest = [i for i in range(len(labels)) if i not in set(shots)]
        data = cachebuild.assemble_arrays([labels[i] for i in shots], {m: v[shots] for m, v in keys.items()}, logits[shots])
        built = cachebuild.build(model_name, data, label_set, tune=fixed is None)
        cache = built.cache
        fitted.append(built.hyper["method"] == "adapter")
        if fixed is not None:
            cache.alpha, cache.beta = fixed[0] * logit_spread(logits[shots]), fixed[1]
        pred_c = cache.logits(logits[rest], {m: v[rest] for m, v in keys.items()}).argmax(-1)
        pred_b = logits[rest].argmax(-1)
        truth = torch.tensor([label_set.index(labels[i]) for i in rest])
        with_cache.append(float((pred_c == truth).float().mean()))
        without.append(float((pred_b == truth).float().mean()))
        chosen.append((cache.alpha, cache.beta))
    return {"with_cache": float(np.mean(with_cache)), "without_cache": float(np.mean(without)),
            "alpha": float(np.median([a for a, _ in chosen])), "beta": float(np.median([b for _, b in chosen])),
            "adapter": float(np.mean(fitted))}


def acted_speech_store(predictor: Predictor, settings: Settings) -> FeatureStore:
    """Features of acted speech as the models were trained on it: without ASR (the corpora's scripted
    sentences carry no emotion, so no text path may read them)."""
    return FeatureStore(FeatureExtractor(settings, predictor.backbones, transcribe=False), settings.feature_cache)


def split_rows(manifest: str | Path, labels: Sequence[str], split: str) -> list:
    """The manifest's rows with one of `labels` in `split` (train, dev or val as `train` assigns them,
    `split_of` with the default seed and dev share, as the shipped checkpoints were trained)."""
    return [r for r in read_manifest(manifest) if r.label in labels and split_of(r) == split]


def kshot_study(settings: Settings, manifests: Sequence[str], models: Sequence[str] = KSHOT_MODELS,
                ks: tuple[int, ...] = (1, 2, 4), seeds: int = 3, split: str = "val", max_speakers: int | None = None) -> dict:
    """The caregiver effect per speaker of `split` in each manifest, for each model, with caches built as
    the app builds them (careful mode, leave-one-out choice, the guard that keeps a cache off). Per K:
    mean accuracy without/with the cache over speakers, the share of speakers that lose accuracy, and
    the worst speaker's change. `max_speakers`: the first N speakers (sorted) of each manifest. `split`:
    train, dev or val (`split_rows`): dev speakers were only used for early stopping and calibration,
    so recipes are chosen on them and val is scored once."""
    predictor = Predictor(settings)
    store = acted_speech_store(predictor, settings)
    by_speaker: dict[tuple[str, str], list] = {}
    for manifest in manifests:
        rows = split_rows(manifest, predictor.labels, split)
        keep = sorted({r.speaker for r in rows})[:max_speakers]
        encoded = store.encode_rows([r for r in rows if r.speaker in keep], desc=Path(manifest).parent.name)[0]
        for row, feats in encoded:
            by_speaker.setdefault((Path(manifest).parent.name, row.speaker), []).append((row, feats))
    if not by_speaker:
        raise EmoWebError(f"no {split} speakers with encoded clips in {', '.join(manifests)}")
    out: dict = {"split": split, "seeds": seeds, "ks": list(ks), "speakers": len(by_speaker), "models": {}}
    for model_name in models:
        loaded = predictor.model(model_name)
        if loaded is None:
            raise EmoWebError(f"no trained {model_name} checkpoint for profile {predictor.backbones.name}")
        table = []
        for (corpus, spk), items in sorted(by_speaker.items()):
            logits, keys = _embed(loaded[0], predictor.backbones.dims, predictor.labels, [feats for _, feats in items])
            for k in ks:
                trial = _speaker_trials(model_name, logits, keys, [row.label for row, _ in items], predictor.labels, k, seeds)
                table.append({"corpus": corpus, "speaker": spk, "k": k, **{m: round(v, 4) for m, v in trial.items()}})
        out["models"][model_name] = {"keys": sorted(keys), "per_speaker": table, "mean": _summary(table, ks)}
    return out


def _summary(table: list[dict], ks: tuple[int, ...]) -> dict:
    """Per K over speakers: mean accuracies, mean gain, share of speakers that lose, worst change, median alpha/beta."""
    out = {}
    for k in ks:
        rows = [r for r in table if r["k"] == k]
        gains = [r["with_cache"] - r["without_cache"] for r in rows]
        out[k] = {
            "without_cache": round(float(np.mean([r["without_cache"] for r in rows])), 4),
            "with_cache": round(float(np.mean([r["with_cache"] for r in rows])), 4),
            "gain": round(float(np.mean(gains)), 4),
            "losing_share": round(float(np.mean([g < -1e-9 for g in gains])), 4),
            "worst": round(float(min(gains)), 4),
            "alpha": float(np.median([r["alpha"] for r in rows])),
            "beta": float(np.median([r["beta"] for r in rows])),
            "adapter": round(float(np.mean([r.get("adapter", 0.0) for r in rows])), 4),
        }
    return out


def card_augment(card: dict | None) -> AudioAugment:
    """The audio augmentation a checkpoint card records (none for an older card or no checkpoint),
    so the study cross-validates the recipe that is shipped."""
    return AudioAugment(**(((card or {}).get("training") or {}).get("audio_augment") or {}))


def card_audio_source(card: dict | None) -> dict:
    """The Auditory Adapter's input a checkpoint card records, as a config override (none: the default)."""
    source = ((card or {}).get("config") or {}).get("audio_source")
    return {"audio_source": source} if source else {}


def crossval_study(settings: Settings, manifest: str, folds: int = 5, epochs: int = 40, ema: float = 0.98,
                   ks: tuple[int, ...] = (1, 2, 4, 8), seeds: int = 5, spreads: tuple[float, ...] = (8, 16, 32, 64, 128),
                   betas: tuple[float, ...] = (4, 8, 16, 32), augment: AudioAugment | None = None) -> dict:
    """Recipe and cache choices made on the training speakers only (validation speakers never loaded).

    Speaker-grouped folds: EmoAsst's audio branch is trained (SupCon + CE, moving average, fixed epochs,
    `augment` or else the shipped checkpoint's audio augmentation) on the other folds' speakers, then on
    each held-out speaker: audio UAR, the caregiver K-shot gain with caches built as the app builds them,
    and the K=4 gain for fixed alpha (in units of the logit spread) x beta, the grid behind
    `models.cache.ALPHA_PER_SPREAD`/`SPREAD_BETA`."""
    predictor = Predictor(settings)
    loaded = predictor.model("emoasst")
    card = loaded[1] if loaded else None
    if augment is None:
        augment = card_augment(card)
    source = card_audio_source(card)
    bb = predictor.backbones
    store = acted_speech_store(predictor, settings)
    rows = [r for r in read_manifest(manifest) if r.label in predictor.labels and r.split == "train"]
    encoded = store.encode_rows(rows, desc="features")[0]
    speakers = sorted({row.speaker for row, _ in encoded})
    if len(speakers) < folds:
        raise EmoWebError(f"{len(speakers)} training speakers in {manifest}: too few for {folds} folds")
    table, grid, reports = [], [], []
    for fold in range(folds):
        held = set(speakers[fold::folds])
        samples = [Sample(row, feats, "dev" if row.speaker in held else "train") for row, feats in encoded]
        torch.manual_seed(fold)
        model = registry.build("emoasst", bb.dims, **source)
        model.attach_text_encoder(lambda texts: bb.text(texts).embedding, bb.text_encoder)  # a lambda: the moving average deep-copies the model
        train(model, [s for s in samples if s.split == "train"], bb.dims, predictor.labels, model.param_groups(), epochs,
              seed=fold, ema_decay=ema, augment=augment)
        reports.append({"fold": fold, "held": sorted(held), **evaluate(model, [s for s in samples if s.split == "dev"], bb.dims, predictor.labels)["audio"]})
        for spk in sorted(held):
            items = [s for s in samples if s.row.speaker == spk]
            logits, keys = _embed(model, bb.dims, predictor.labels, [s.features for s in items])
            labels = [s.row.label for s in items]
            for k in ks:
                trial = _speaker_trials("emoasst", logits, keys, labels, predictor.labels, k, seeds)
                table.append({"speaker": spk, "k": k, **{m: round(v, 4) for m, v in trial.items()}})
            for spread, beta in itertools.product(spreads, betas):
                trial = _speaker_trials("emoasst", logits, keys, labels, predictor.labels, 4, seeds, fixed=(spread, beta))
                grid.append({"speaker": spk, "spreads": spread, "beta": beta, "gain": round(trial["with_cache"] - trial["without_cache"], 4)})
    gains = {(g["spreads"], g["beta"]): [] for g in grid}
    for g in grid:
        gains[(g["spreads"], g["beta"])].append(g["gain"])
    return {"folds": reports, "audio_uar": round(float(np.mean([r["uar"] for r in reports])), 4), "mean": _summary(table, ks),
            "fixed_k4": [{"spreads": a, "beta": b, "gain": round(float(np.mean(v)), 4)} for (a, b), v in gains.items()],
            "per_speaker": table, "epochs": epochs, "ema": ema, "seeds": seeds, "audio_augment": augment.to_dict(),
            "audio_source": source.get("audio_source", "audio")}


def egemaps_baseline(manifest: str, cache_dir: Path, labels: list[str]) -> dict:
    """eGeMAPSv02 functionals (88) + standardised logistic regression, train speakers -> val speakers."""
    try:
        import opensmile
    except ImportError as exc:
        raise EmoWebError("the baseline needs opensmile: pip install -r requirements-dev.txt") from exc
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = [r for r in read_manifest(manifest) if r.label in labels and r.path is not None]
    cache = cache_dir / f"egemaps-{Path(manifest).parent.name}.npz"
    if cache.is_file():
        feats = np.load(cache)["x"]
    else:
        smile = opensmile.Smile(opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.Functionals)
        feats = np.stack([smile.process_file(str(r.path)).to_numpy()[0] for r in rows])
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=feats)
    train = [i for i, r in enumerate(rows) if r.split == "train"]
    val = [i for i, r in enumerate(rows) if r.split == "val"]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, class_weight="balanced"))
    clf.fit(feats[train], [rows[i].label for i in train])
    pred = clf.predict(feats[val])
    return classification_report([rows[i].label for i in val], list(pred), labels)
