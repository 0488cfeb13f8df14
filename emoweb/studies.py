"""Reproducible studies behind README numbers (run through `python -m emoweb bench ...`).

- `kshot_study`: the caregiver effect. For each held-back speaker, K of that speaker's clips per class
  go into the few-shot cache and the speaker's remaining clips are scored, with and without the cache.
  alpha/beta are never tuned on the speaker they are scored on: they come from the dev speakers (held
  out from training, never reported) or, for a checkpoint trained on every training speaker, from the
  other validation speakers.
- `egemaps_baseline`: the classic peer, openSMILE eGeMAPS functionals + logistic regression, trained
  on the same train speakers and scored on the same validation speakers as the models.
"""
from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import torch

from emoweb.batching import to_input
from emoweb.config import Settings
from emoweb.errors import EmoWebError
from emoweb.featstore import FeatureStore
from emoweb.inference import Predictor
from emoweb.manifests import read_manifest
from emoweb.metrics import classification_report
from emoweb.training import DEV_FRACTION, assign_splits
from models.cache import FewShotCache

ALPHAS = (0.5, 1, 2, 5, 10, 20, 40, 80, 160)
BETAS = (0.5, 1, 2, 4, 8, 16, 32)


@torch.no_grad()
def _embed(predictor: Predictor, model_name: str, feats: list) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Base logits and the cache keys the app queries with (`inference.apply_cache`): the fused embedding
    and every per-modality key the clips have."""
    model, _ = predictor.model(model_name)
    out = model(to_input(feats, predictor.backbones.dims), predictor.labels)
    keys = {"fused": out.embedding, **out.modality_embeddings}
    return out.logits, {m: k for m, k in keys.items() if bool(k.any())}


def _speaker_trials(logits, keys: dict[str, torch.Tensor], labels: list[str], label_set: list[str], k: int,
                    alpha: float, beta: float, seeds: int):
    """Accuracy on the speaker's clips not in the cache, averaged over seeded K-shot draws."""
    with_cache, without = [], []
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(i)
    for seed in range(seeds):
        rng = random.Random(seed)
        shots = [i for idxs in by_label.values() for i in rng.sample(idxs, min(k, len(idxs) - 1))]
        rest = [i for i in range(len(labels)) if i not in set(shots)]
        cache = FewShotCache.build({m: v[shots] for m, v in keys.items()}, [labels[i] for i in shots], label_set, alpha=alpha, beta=beta)
        pred_c = cache.logits(logits[rest], {m: v[rest] for m, v in keys.items()}).argmax(-1)
        pred_b = logits[rest].argmax(-1)
        truth = torch.tensor([label_set.index(labels[i]) for i in rest])
        with_cache.append(float((pred_c == truth).float().mean()))
        without.append(float((pred_b == truth).float().mean()))
    return float(np.mean(with_cache)), float(np.mean(without))


def kshot_study(settings: Settings, manifest: str, model_name: str = "emoasst",
                ks: tuple[int, ...] = (1, 2, 4, 8), seeds: int = 5) -> dict:
    """alpha/beta are tuned at K=4 on speakers the scores are not reported for: the dev speakers when the
    checkpoint held some out of training (its card's `dev_fraction`), else, for each validation speaker,
    the other validation speakers (leave one speaker out)."""
    predictor = Predictor(settings)
    loaded = predictor.model(model_name)
    if loaded is None:
        raise EmoWebError(f"no trained {model_name} checkpoint for profile {predictor.backbones.name}")
    dev_fraction = float(loaded[1].get("training", {}).get("dev_fraction", DEV_FRACTION))
    store = FeatureStore(predictor.extractor, settings.feature_cache)
    rows = [r for r in read_manifest(manifest) if r.label in predictor.labels]
    samples = assign_splits(store.encode_rows(rows, desc="features")[0], dev_fraction=dev_fraction)
    per_split: dict[str, dict[str, tuple]] = {"dev": {}, "val": {}}
    for split in per_split:
        speakers = sorted({s.row.speaker for s in samples if s.split == split})
        for spk in speakers:
            items = [s for s in samples if s.split == split and s.row.speaker == spk]
            logits, keys = _embed(predictor, model_name, [s.features for s in items])
            per_split[split][spk] = (logits, keys, [s.row.label for s in items])
    val = per_split["val"]
    if not val or (not per_split["dev"] and len(val) < 2):
        raise EmoWebError("the K-shot study needs validation speakers, and dev speakers or at least two validation speakers")

    def tune(speakers: list[tuple]) -> tuple[float, float]:
        def gain(ab: tuple[float, float]) -> float:
            return float(np.mean([c - b for c, b in (_speaker_trials(lg, ky, lb, predictor.labels, 4, *ab, seeds) for lg, ky, lb in speakers)]))

        return max(itertools.product(ALPHAS, BETAS), key=gain)

    if per_split["dev"]:
        tuned_on = "dev speakers at K=4"
        chosen = dict.fromkeys(val, tune(list(per_split["dev"].values())))
    else:
        tuned_on = "the other validation speakers at K=4 (leave one speaker out)"
        chosen = {spk: tune([v for other, v in val.items() if other != spk]) for spk in val}
    table = []
    for k in ks:
        for spk, (lg, ky, lb) in val.items():
            alpha, beta = chosen[spk]
            c, b = _speaker_trials(lg, ky, lb, predictor.labels, k, alpha, beta, seeds)
            table.append({"speaker": spk, "k": k, "alpha": alpha, "beta": beta, "with_cache": round(c, 4), "without_cache": round(b, 4)})
    summary = {
        k: {
            "with_cache": round(float(np.mean([r["with_cache"] for r in table if r["k"] == k])), 4),
            "without_cache": round(float(np.mean([r["without_cache"] for r in table if r["k"] == k])), 4),
        }
        for k in ks
    }
    keys = sorted(next(iter(val.values()))[1])
    return {"model": model_name, "keys": keys, "alpha_beta": {spk: list(ab) for spk, ab in chosen.items()}, "seeds": seeds,
            "tuned_on": tuned_on, "per_speaker": table, "mean": summary}


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


def _ravdess() -> str:
    from emoweb.config import SHARED_DATA

    path = SHARED_DATA / "speech" / "ravdess" / "manifest.csv"
    if not path.is_file():
        raise EmoWebError(f"RAVDESS manifest not found at {path} (the shared data folder is needed)")
    return str(path)


def _kshot_text(r: dict) -> str:
    chosen = ", ".join(f"{spk}: {a:g}/{b:g}" for spk, (a, b) in r["alpha_beta"].items())
    lines = [f"K-shot caregiver cache, {r['model']} on speech clips (keys: {', '.join(r['keys'])}), per validation speaker, {r['seeds']} draws; "
             f"alpha/beta tuned on {r['tuned_on']} ({chosen})", "| K | no cache | with cache | gain |", "|---|---|---|---|"]
    for k, m in r["mean"].items():
        lines.append(f"| {k} | {100 * m['without_cache']:.1f} | {100 * m['with_cache']:.1f} | {100 * (m['with_cache'] - m['without_cache']):+.1f} |")
    return "\n".join(lines)


def _baseline_text(r: dict) -> str:
    return "\n".join(f"{name}: acc {100 * rep['accuracy']:.1f}  UAR {100 * rep['uar']:.1f}  wF1 {100 * rep['weighted_f1']:.1f}  (n={rep['n']})"
                     for name, rep in r["reports"].items())


def _register() -> None:
    from dataclasses import replace

    from emoweb.bench import bench
    from emoweb.config import get_settings
    from emoweb.evaluation import evaluate_manifest
    from models import LABEL7

    @bench("kshot", "caregiver effect: K = 1,2,4,8 clips of a held-back RAVDESS speaker in the cache", _kshot_text)
    def _kshot(args) -> dict:
        torch.set_num_threads(args.threads)
        return kshot_study(replace(get_settings(), device=args.device), _ravdess())

    @bench("baseline", "EmoAsst audio vs openSMILE eGeMAPS + logistic regression on unseen RAVDESS speakers", _baseline_text)
    def _baseline(args) -> dict:
        torch.set_num_threads(args.threads)
        settings = replace(get_settings(), device=args.device)
        ours = evaluate_manifest(settings, _ravdess(), "emoasst", "val")["reports"]["emoasst"]
        peer = egemaps_baseline(_ravdess(), settings.feature_cache.parent / "studies", list(LABEL7))
        return {"reports": {"emoasst (audio)": ours, "eGeMAPS + LogReg": peer}, "split": "RAVDESS val actors 15-18"}


_register()
