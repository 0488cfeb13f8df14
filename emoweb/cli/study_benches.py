"""The studies' benchmarks (`python -m emoweb bench kshot|crossval|baseline`), registered without
importing the studies, so listing the commands needs no torch."""
from __future__ import annotations

import argparse

from emoweb.cli import settings_from
from emoweb.cli.bench import bench
from emoweb.errors import EmoWebError


def _settings(args: argparse.Namespace):
    """The settings for a study run, with torch's CPU threads set to `--threads`."""
    import torch

    torch.set_num_threads(args.threads)
    return settings_from(args)


def _shared_manifest(folder: str) -> str:
    from emoweb.config import SHARED_DATA

    path = SHARED_DATA / folder / "manifest.csv"
    if not path.is_file():
        raise EmoWebError(f"{folder} manifest not found at {path} (the shared data folder is needed)")
    return str(path)


def _ravdess() -> str:
    return _shared_manifest("speech/ravdess")


def _kshot_text(r: dict) -> str:
    lines = [f"K-shot caregiver cache on {r['speakers']} {r['split']} speakers (K clips per label of one speaker in the "
             f"cache, the rest of that speaker's clips scored, {r['seeds']} draws; caches built by the app's rebuild)",
             "| model | K | no cache | with cache | gain | speakers losing | worst speaker | fitted adapter on |",
             "|---|---|---|---|---|---|---|---|"]
    for model, m in r["models"].items():
        lines += [f"| {model} | {k} | {100 * v['without_cache']:.1f} | {100 * v['with_cache']:.1f} | {100 * v['gain']:+.1f} | "
                  f"{100 * v['losing_share']:.0f}% | {100 * v['worst']:+.1f} | {100 * v.get('adapter', 0.0):.0f}% |"
                  for k, v in m["mean"].items()]
    return "\n".join(lines)


def _kshot_rows(mean: dict) -> list[str]:
    """One markdown row per K of a `_summary`: accuracies without/with the cache, the gain, alpha/beta."""
    return [f"| {k} | {100 * m['without_cache']:.1f} | {100 * m['with_cache']:.1f} | "
            f"{100 * (m['with_cache'] - m['without_cache']):+.1f} | {m['alpha']:.0f} / {m['beta']:g} |" for k, m in mean.items()]


def _crossval_text(r: dict) -> str:
    per_fold = " / ".join(f"{100 * f['uar']:.1f}" for f in r["folds"])
    augment = ", ".join(f"{k} {v:g}" for k, v in r["audio_augment"].items() if k != "min_tokens" and v) or "none"
    lines = [f"Speaker-grouped cross-validation on the training speakers ({len(r['folds'])} folds, {r['epochs']} epochs, "
             f"moving average {r['ema']}, audio tokens: {r['audio_source']}, audio augmentation: {augment}): held-out audio UAR {100 * r['audio_uar']:.1f} (per fold: {per_fold})", "",
             "Caregiver cache as the app builds it, per held-out speaker:", "| K | no cache | with cache | gain | alpha / beta (median) |",
             "|---|---|---|---|---|", *_kshot_rows(r["mean"])]
    lines += ["", "K = 4 gain with fixed alpha (x logit spread) and beta:"]
    for g in sorted(r["fixed_k4"], key=lambda g: -g["gain"]):
        lines.append(f"  alpha {g['spreads']:g} spreads, beta {g['beta']:g}: {100 * g['gain']:+.1f}")
    return "\n".join(lines)


def _baseline_text(r: dict) -> str:
    return "\n".join(f"{name}: acc {100 * rep['accuracy']:.1f}  UAR {100 * rep['uar']:.1f}  wF1 {100 * rep['weighted_f1']:.1f}  (n={rep['n']})"
                     for name, rep in r["reports"].items())



@bench("kshot", "caregiver effect, all four models: K = 1,2,4 clips per label of one unseen RAVDESS or CREMA-D "
                "speaker in the cache (--ks, --corpora, --split, --speakers)", _kshot_text)
def _kshot(args) -> dict:
    try:
        ks = tuple(int(k) for k in args.ks.split(",") if k.strip())
    except ValueError:
        raise EmoWebError(f"--ks must be whole numbers separated by commas, not {args.ks!r}") from None
    if not ks or min(ks) < 1:
        raise EmoWebError(f"--ks needs at least one K of 1 or more, not {args.ks!r}")
    from emoweb.learning.studies import KSHOT_MODELS, kshot_study

    manifests = [_shared_manifest(f"speech/{c.strip()}") for c in args.corpora.split(",") if c.strip()]
    models = KSHOT_MODELS if args.models == "all" else tuple(m.strip() for m in args.models.split(",") if m.strip())
    return kshot_study(_settings(args), manifests, models, ks=ks, split=args.split, max_speakers=args.speakers)


@bench("crossval", "EmoAsst audio recipe and cache defaults, cross-validated on the training speakers only", _crossval_text)
def _crossval(args) -> dict:
    from emoweb.learning.studies import crossval_study

    return crossval_study(_settings(args), _ravdess())


@bench("baseline", "EmoAsst audio vs openSMILE eGeMAPS + logistic regression on unseen RAVDESS speakers", _baseline_text)
def _baseline(args) -> dict:
    from emoweb.learning.evaluation import evaluate_manifest
    from emoweb.learning.studies import egemaps_baseline
    from models import LABEL7

    settings = _settings(args)
    ours = evaluate_manifest(settings, _ravdess(), "emoasst", "val")["reports"]["emoasst"]
    peer = egemaps_baseline(_ravdess(), settings.feature_cache.parent / "studies", list(LABEL7))
    return {"reports": {"emoasst (audio)": ours, "eGeMAPS + LogReg": peer}, "split": "RAVDESS val actors 15-18"}


def _generalise_text(r: dict) -> str:
    from emoweb.learning.generalise import generalise_text

    return generalise_text(r)


@bench("generalise", "every model on every shared corpus's validation split: accuracy, UAR, weighted F1, ECE", _generalise_text)
def _generalise(args: argparse.Namespace) -> dict:
    from emoweb.learning.generalise import generalise

    return generalise(_settings(args), args.models)


def _loco_text(r: dict) -> str:
    from emoweb.learning.loco import loco_text

    return loco_text(r)


@bench("loco", "leave-one-corpus-out for speech: each model's recipe retrained without RAVDESS, CREMA-D or TESS "
               "and scored on all of it (--out: the folds' folder, resumable)", _loco_text)
def _loco(args: argparse.Namespace) -> dict:
    from emoweb.learning.loco import loco

    return loco(_settings(args), args.models, args.out, args.threads)
