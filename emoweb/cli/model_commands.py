"""Model subcommands: `train`, `eval`, `predict` (registered into the CLI).

torch, the backbones and the models are imported inside the runners, so registering these commands
(every `python -m emoweb` call) stays cheap.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from emoweb.cli import (add_backbones, add_device, add_json, add_models, answer_text, clip_paths, command, emit, model_answer, model_name,
                        note_lines, settings_from, skipped_line)
from emoweb.config import BUILT_CLIPS_IN_CORPUS, BUILT_CLIPS_OWN_GROUPS, DEV_FRACTION, EPOCH_ROWS_PER_MODALITY, TextTuningRecipe
from emoweb.errors import EmoWebError
from models import MODELS


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", choices=sorted(MODELS))
    add_backbones(p)
    p.add_argument("--data", required=True, help="MANIFEST[,MANIFEST...] (CSV: path,label[,text,speaker,split])")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epoch-rows", type=int, default=EPOCH_ROWS_PER_MODALITY, metavar="N",
                   help=f"rows per modality in one epoch, balanced over corpora and labels (default {EPOCH_ROWS_PER_MODALITY})")
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="score and keep an exponential moving average of the weights (e.g. 0.98 per step; 0: off)")
    p.add_argument("--dev-fraction", type=float, default=DEV_FRACTION,
                   help=f"share of training speakers held out for early stopping (default {DEV_FRACTION}; "
                   "0: train on all of them for --epochs, for a recipe chosen beforehand)")
    p.add_argument("--audio-crop", type=float, default=0.0, metavar="F",
                   help="train on a random contiguous (1-F)..100%% of each clip's audio tokens (0: off)")
    p.add_argument("--audio-drop", type=float, default=0.0, metavar="P", help="leave out each audio token with probability P")
    p.add_argument("--audio-noise", type=float, default=0.0, metavar="S",
                   help="add Gaussian noise of S x the clip's token std to the audio tokens")
    p.add_argument("--audio-splice", type=float, default=0.0, metavar="P",
                   help="with probability P, join part of a clip's audio tokens to part of a same-label clip by another "
                   "training speaker")
    p.add_argument("--audio-source", default=None, metavar="KEY",
                   help="the audio tokens the model reads (its config's audio_source; default: the profile's primary "
                   "encoder, 'audio', except MER-SEM-MBT, whose default is its CNN on the log-mel; the embedded profile also has "
                   "'whisper_layer4')")
    p.add_argument("--built-clips", choices=(BUILT_CLIPS_IN_CORPUS, BUILT_CLIPS_OWN_GROUPS), default=BUILT_CLIPS_IN_CORPUS,
                   help=f"how an epoch balances the built partial-expression clips: '{BUILT_CLIPS_IN_CORPUS}' (default), among "
                   f"the photos of the corpus they were built from; '{BUILT_CLIPS_OWN_GROUPS}', as groups of their own (more of "
                   "them per epoch: the session-9 recipe)")
    p.add_argument("--out", type=Path, default=None,
                   help="checkpoint root (default: EMOWEB_CHECKPOINT_ROOT, else models/checkpoints: where the app reads)")
    add_device(p)


def _audio_source(args: argparse.Namespace, encoded: list) -> dict:
    """The config override for `--audio-source`, checked against the encoded clips."""
    if not args.audio_source:
        return {}
    lacking = sum(1 for _, f in encoded if "audio" in f.audio_tokens and args.audio_source not in f.audio_tokens)
    if lacking:
        raise EmoWebError(f"--audio-source {args.audio_source}: {lacking} clips have no such audio tokens in this backbone profile")
    return {"audio_source": args.audio_source}


def _encode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="MANIFEST[,MANIFEST...]")
    add_backbones(p)
    p.add_argument("--no-asr", action="store_true",
                   help="no transcript (what `train` reads: the text path learns from text-only rows only)")
    p.add_argument("--shard", default="1/1", metavar="I/N", help="encode only every N-th row from the I-th (parallel runs)")
    p.add_argument("--splits", default="train,dev,val", metavar="SPLIT[,SPLIT...]",
                   help="encode only rows of these splits, as `train` assigns them (dev,val: what calibrate, eval and "
                        "bench generalise read, without the training rows)")
    add_device(p)


@command("encode", "fill the feature cache for manifests (resumable: clips already cached are skipped)",
         prints="how many rows were encoded and skipped (progress bar on stderr)",
         takes="about 0.1-0.2 s per speech clip without ASR, ~1 s with it, ~0.03 s per face photo on a 2-CPU machine")(_encode_args)
def _encode(args: argparse.Namespace) -> int:
    try:
        index, total = (int(x) for x in args.shard.split("/"))
        if not 1 <= index <= total:
            raise ValueError
    except ValueError:
        raise EmoWebError(f"--shard {args.shard!r}: expected I/N with 1 <= I <= N") from None
    splits = {x.strip() for x in args.splits.split(",") if x.strip()}
    if not splits or splits - {"train", "dev", "val"}:
        raise EmoWebError(f"--splits {args.splits!r}: expected some of train, dev, val")
    from emoweb.learning.manifests import read_manifests
    from emoweb.learning.training import split_of
    from emoweb.pipeline.featstore import FeatureStore
    from emoweb.pipeline.features import FeatureExtractor

    rows = [r for r in read_manifests(args.data) if split_of(r) in splits][index - 1 :: total]
    settings = settings_from(args)
    store = FeatureStore(FeatureExtractor(settings, transcribe=not args.no_asr), settings.feature_cache)
    encoded, skipped = store.encode_rows(rows, desc=f"encode {args.shard}")
    print(json.dumps({"encoded": len(encoded), "skipped": len(skipped), "reasons": skipped[:20]}, indent=2))
    return 0


def _training_samples(settings, model: str, data: str, seed: int, dev_fraction: float, dev_only: bool = False):
    """(backbones, encoded rows, samples with train/dev/val splits and composites, skipped reasons,
    calibration rows): the rows `train` learns from, rebuilt the same way by `calibrate`. Media rows are
    read without ASR (the scripted sentences carry no emotion, so text is learnt from text-only rows, and
    only by a model with a trained text path); dev is capped per (corpus, label); partial-expression clips
    of the training people (`emoweb.learning.pairs`); composites for the models that use them. The calibration rows are every dev row, text and composites included even for
    a model that does not learn from them: it still answers such inputs in the app. They are not capped:
    a temperature fitted on a label-balanced subset of a corpus whose labels are not balanced (MELD: half
    neutral, the model's easiest label) fits a mix no one brings (session 14: EmoAsst's text, ECE on
    GoEmotions' validation file 2.5% uncalibrated, 11.7% calibrated on the capped rows). `dev_only`: read only
    the dev rows (what `calibrate` needs; the same dev rows and composites, minutes faster)."""
    from emoweb.learning.manifests import read_manifests
    from emoweb.learning.pairs import composite_samples, partial_expression_samples
    from emoweb.learning.training import assign_splits, cap_dev, split_of
    from emoweb.pipeline.featstore import FeatureStore
    from emoweb.pipeline.features import FeatureExtractor
    from models import LABEL7, registry

    store = FeatureStore(FeatureExtractor(settings, transcribe=False), settings.feature_cache, compact=True)
    rows = [r for r in read_manifests(data) if r.label in LABEL7 and (not dev_only or split_of(r, seed, dev_fraction) == "dev")]
    encoded, skipped = store.encode_rows(rows, desc="backbone features (cached)")
    assigned = assign_splits(encoded, seed, dev_fraction)
    every = cap_dev(assigned, seed=seed)
    # silent clips with the expression in part of the frames (training speakers only: dev and val stay photos)
    partial = partial_expression_samples([s for s in every if s.split == "train"], seed=seed)
    pairs = composite_samples(every + partial, seed=seed)  # face (photo or partial clip) + speech pairs, same label and split
    cls = registry.model_class(model)
    samples = every + partial + (pairs if getattr(cls, "uses_composites", False) else [])
    if not cls.learns_from_text:  # text-only rows would teach it nothing
        skipped += [f"text-only row: {model} has no trained text path"] * sum(1 for r, _ in encoded if r.modality == "text")
        encoded = [(r, f) for r, f in encoded if r.modality != "text"]
        samples = [s for s in samples if s.row.modality != "text"]
    calibration = [s for s in assigned + pairs if s.split == "dev"]  # every dev row: each corpus's own label mix
    return store.extractor.backbones, encoded, samples, skipped, calibration


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", choices=sorted(MODELS))
    add_backbones(p)
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="checkpoint root (default: EMOWEB_CHECKPOINT_ROOT, else models/checkpoints: where the app reads)")
    add_device(p)


@command("calibrate", "fit a checkpoint's calibration again (temperatures, sense reliabilities) on its own dev rows and "
         "rewrite that part of its JSON card (then run `cards`)",
         prints="the calibration (temperatures per input kind, ECE per dev corpus before/after, the 'not sure' level)",
         takes="1-5 minutes (the card's training data read from the feature cache)")(_calibrate_args)
def _calibrate(args: argparse.Namespace) -> int:
    from emoweb.learning.training import calibrate
    from emoweb.pipeline.inference import shipped_root
    from models import LABEL7, registry

    settings = settings_from(args)
    root = shipped_root(args.checkpoints)
    loaded = registry.load(args.model, settings.profile, root, calibrated=False)
    if loaded is None:
        raise EmoWebError(f"no {args.model} checkpoint for the {settings.profile!r} backbone set in {root}")
    model, card = loaded
    training = card.get("training", {})
    bb, _, _, _, dev = _training_samples(settings, args.model, ",".join(card["data"]["manifests"]), card.get("seed", 0),
                                         training.get("dev_fraction", DEV_FRACTION), dev_only=True)
    if not dev:
        raise EmoWebError(f"{args.model} was trained without a dev split: nothing held out to calibrate on")
    model.attach_text_encoder(lambda texts: bb.text(texts).embedding, bb.text_encoder)
    card["calibration"] = calibrate(model, dev, bb.dims, list(LABEL7))
    registry.write_card(args.model, settings.profile, card, root)
    print(json.dumps(card["calibration"], indent=2))
    return 0


@command("train", "train a model's heads on cached backbone features; writes checkpoint + card",
         prints="the checkpoint's path and its validation metrics as JSON (progress bars on stderr)",
         takes="minutes: encoding every clip once (about 1 s per clip on a 2-CPU machine, cached for later runs), "
         "then seconds to minutes per epoch")(_train_args)
def _train(args: argparse.Namespace) -> int:
    import torch

    from emoweb.learning.augment import AudioAugment
    from emoweb.learning.training import calibrate, data_card, evaluate, train
    from emoweb.pipeline.inference import shipped_root
    from models import LABEL7, registry

    try:
        augment = AudioAugment(crop=args.audio_crop, drop=args.audio_drop, noise=args.audio_noise, splice=args.audio_splice)
    except ValueError as exc:
        raise EmoWebError(str(exc)) from None
    settings = settings_from(args)
    bb, encoded, samples, skipped, calibration_rows = _training_samples(settings, args.model, args.data, args.seed, args.dev_fraction)
    torch.manual_seed(args.seed)
    try:
        model = registry.build(args.model, bb.dims, **_audio_source(args, encoded))
    except ValueError as exc:  # a config value the model refuses (e.g. an audio source it cannot read)
        raise EmoWebError(f"{args.model}: {exc}") from None
    model.attach_text_encoder(lambda texts: bb.text(texts).embedding, bb.text_encoder)
    labels = list(LABEL7)
    result = train(model, samples, bb.dims, labels, model.param_groups(), args.epochs, args.batch_size, args.epoch_rows,
                   args.patience, args.seed, ema_decay=args.ema, augment=augment, built_clips=args.built_clips)
    metrics = {split: evaluate(model, chosen, bb.dims, labels) for split in ("val", "dev")
               if (chosen := [s for s in samples if s.split == split])}
    calibration = calibrate(model, calibration_rows, bb.dims, labels) if calibration_rows else None
    stopping = (f"dev = {args.dev_fraction:.0%} of training speakers by hash, used for early stopping" if args.dev_fraction
                else f"no dev split: all training speakers, {args.epochs} epochs, the last weights kept")
    card = {
        "labels": labels,
        "seed": args.seed,
        "data": {"manifests": args.data.split(","), "counts": data_card(samples), "skipped": len(skipped)},
        "splits": f"val = the manifest's val split (unseen speakers / identities), reported only; {stopping}",
        "training": {"epochs_run": len(result.history), "best_epoch": result.best_epoch, "seconds": round(result.seconds, 1),
                     "ema": args.ema, "dev_fraction": args.dev_fraction, "audio_augment": augment.to_dict(), "built_clips": args.built_clips,
                     "history": result.history},
        "metrics": _slim(metrics),
        **({"calibration": calibration} if calibration else {}),
        "command": f"python -m emoweb train {args.model} --backbones {bb.name} --data {args.data} --seed {args.seed} "
        f"--epochs {args.epochs} --patience {args.patience} --batch-size {args.batch_size} --epoch-rows {args.epoch_rows} --ema {args.ema} "
        f"--dev-fraction {args.dev_fraction}"
        + "".join(f" --audio-{k} {v}" for k, v in augment.to_dict().items() if k != "min_tokens" and v)
        + (f" --audio-source {args.audio_source}" if args.audio_source else "")
        + (f" --built-clips {args.built_clips}" if args.built_clips != BUILT_CLIPS_IN_CORPUS else ""),
    }
    path = registry.save(model, args.model, bb.name, card, shipped_root(args.out))
    # a manifest without a val split (every row trained on, or dev only) still reports what it has
    print(json.dumps({"checkpoint": str(path), "metrics": card["metrics"].get("val") or card["metrics"].get("dev") or {}}, indent=2))
    return 0


def _slim(metrics: dict) -> dict:
    """Headline numbers per split and modality for the card (confusion matrices kept for val)."""
    keep = ("n", "accuracy", "weighted_f1", "uar", "per_class_recall")
    out = {}
    for split, per_mod in metrics.items():
        out[split] = {
            mod: {k: r[k] for k in keep + (("confusion",) if split == "val" else ())} for mod, r in per_mod.items()
        }
    return out


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="MANIFEST[,MANIFEST...]")
    add_models(p)
    p.add_argument("--split", default=None,
                   help="score the rows of this split only (default: val when the manifest has a split column, "
                   "else every row; '' = every row)")
    p.add_argument("--cache", type=int, default=0, metavar="K", help="K-shot cache from the manifest's train rows")
    p.add_argument("--composites", action="store_true",
                   help="score composites instead: each speech clip of the split with a face photo of the same label "
                   "(needs a speech and a face manifest)")
    add_backbones(p)
    add_device(p)
    add_json(p)


def _skipped_lines(reasons: list[str]) -> list[str]:
    """Each distinct reason a row was skipped, once, with how many rows it covers."""
    from collections import Counter

    return [f"skipped: {reason}" + (f" ({n} rows)" if n > 1 else "") for reason, n in Counter(reasons).items()]


@command("eval", "metrics per model on a labelled manifest (accuracy, weighted F1, UAR, confusion)",
         prints="a table of accuracy, weighted F1 and UAR per model and modality, the rows used and why rows were skipped",
         takes="about 1 s per clip not yet in the feature cache (2-CPU machine), then seconds")(_eval_args)
def _eval(args: argparse.Namespace) -> int:
    from emoweb.learning.manifests import read_manifests

    if args.cache < 0:
        raise EmoWebError(f"--cache {args.cache}: give how many labelled clips per label the cache holds (1 or more), or 0 for none")
    rows = read_manifests(args.manifest)  # a missing or malformed manifest answers before torch and the models load
    from emoweb.learning.evaluation import evaluate_manifest
    from emoweb.learning.metrics import comparison_table

    result = evaluate_manifest(settings_from(args), args.manifest, args.models, args.split, args.cache, args.composites, rows)
    emit(result, args.json, lambda r: "\n".join([comparison_table({model_name(m): rep for m, rep in r["reports"].items()}), "",
                                                 f"split {r['split'] or '(every row)'}: rows used {r['n']}, skipped {len(r['skipped'])}",
                                                 *_skipped_lines(r["skipped"])]))
    return 0


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", help="clip file(s) or folder(s); none with --text: the text alone")
    p.add_argument("--text", default=None, metavar="WORDS",
                   help="words to read: alone, or with clips in place of their transcript (the same text path)")
    add_models(p)
    add_backbones(p)
    add_device(p)
    add_json(p)


def _summary(prediction, predictor) -> dict:
    """A prediction's summary with the one answer first (`headline`: the UI's vote of the models)."""
    from emoweb.services.headline import of_prediction

    head = of_prediction(prediction, predictor.confident_at(list(prediction.outputs)))
    return {"headline": head.to_dict(), **prediction.to_summary()}


def _predict_line(item: dict) -> str:
    source = item["clip"]["source"]
    if "error" in item:
        return f"{source}: error: {item['error']}"
    h = item["headline"]
    sure = set(h.get("confident", []))
    models = ", ".join(model_answer(m, o["label"], o["probs"], m in sure) for m, o in item["models"].items())
    return "\n".join([f"{source}: {answer_text(h)}; {models}", *note_lines(item["clip"].get("warnings", []))])


@command("predict", "run every available model on clips (backbones once per clip)",
         prints="per clip the one answer (the models' vote, how sure in words) and each model's label and probability, "
                "with the clip's notes under it (e.g. only the first 60 s analysed); exit 1 when a clip failed",
         takes="2-10 s to load the backbones and models, then about 1 s per 4-s clip (5 s per 60-s clip) on a 2-CPU machine")(_predict_args)
def _predict(args: argparse.Namespace) -> int:
    from emoweb.pipeline.media import check_media
    from emoweb.safetext import clean

    if not args.paths and args.text is None:
        raise EmoWebError('nothing to predict: give clip file(s) or folder(s), or --text "..."')
    if not args.paths and not clean(args.text).strip():
        raise EmoWebError("--text is empty: type at least one word")  # before torch and the models load
    paths, skipped = clip_paths(args.paths)
    refused: dict[Path, EmoWebError] = {}
    for path in paths:  # a file that is no media answers before torch and the models load
        try:
            check_media(path)
        except EmoWebError as exc:
            if len(paths) == 1:
                raise
            refused[path] = exc
    predictor = None  # every clip refused: nothing to load
    if not paths or len(refused) < len(paths):
        from emoweb.pipeline.inference import Predictor

        predictor = Predictor(settings_from(args))
    if not paths:
        emit(_summary(predictor.predict_text(args.text, args.models), predictor), args.json, _predict_line)
        return 0
    results, failed = [], 0
    start = time.perf_counter()
    for path in paths:
        try:
            if path in refused:
                raise refused[path]
            results.append(_summary(predictor.predict(path, args.models, text=args.text), predictor))
        except EmoWebError as exc:
            if len(paths) == 1:
                raise
            failed += 1
            results.append({"clip": {"source": path.name}, "error": str(exc)})
        if not args.json:  # each clip's line as soon as it is answered, not all of them at the end
            print(_predict_line(results[-1]), flush=True)
    elapsed = time.perf_counter() - start
    if not args.json:
        if skipped:
            print(skipped_line(skipped))
        return 1 if failed else 0
    emit(results[0] if len(results) == 1 and not skipped else {
        "clips": results, "seconds": round(elapsed, 3), "clips_per_second": round(len(paths) / elapsed, 3), "failed": failed,
        "skipped": skipped}, True)
    return 1 if failed else 0  # as `ingest`: a batch with a failed clip is not a success


def _tune_text_args(p: argparse.ArgumentParser) -> None:
    r = TextTuningRecipe()
    p.add_argument("--data", required=True, help="text-only MANIFEST[,MANIFEST...] (MELD's CSV, GoEmotions' TSV): their training rows")
    p.add_argument("--val", default="", metavar="MANIFEST[,...]", help="manifests scored once at the end and written in the card (reported, not tuned on)")
    p.add_argument("--tuned-layers", type=int, default=r.tuned_layers, help=f"MiniLM's top layers tuned (default {r.tuned_layers} of 6)")
    p.add_argument("--epochs", type=int, default=r.epochs)
    p.add_argument("--lr", type=float, default=r.lr)
    p.add_argument("--rows-per-manifest", type=int, default=r.rows_per_manifest, metavar="N")
    p.add_argument("--seed", type=int, default=r.seed)
    p.add_argument("--dev-fraction", type=float, default=r.dev_fraction)
    p.add_argument("--out", type=Path, default=None, help="weights file (default: models/weights/minilm_emotion.safetensors, where the app reads)")


@command("tune-text", "tune the text backbone's emotion classifier (MiniLM's top layers + a linear layer) on text-only manifests",
         prints="progress, then the weights' path and each manifest's dev (and --val) weighted F1 as JSON; a JSON card beside the weights",
         takes="about 10-20 minutes on 2 CPUs for 20k rows and 2 epochs")(_tune_text_args)
def _tune_text(args: argparse.Namespace) -> int:
    import torch

    from emoweb.learning.manifests import read_manifests
    from emoweb.learning.text_tuning import dev_reports, tune
    from models import LABEL7
    from models.backbones.text_emotion import WEIGHTS

    recipe = TextTuningRecipe(tuned_layers=args.tuned_layers, epochs=args.epochs, lr=args.lr,
                              rows_per_manifest=args.rows_per_manifest, seed=args.seed, dev_fraction=args.dev_fraction)
    try:
        model, card = tune(read_manifests(args.data), recipe)
    except ValueError as exc:
        raise EmoWebError(str(exc)) from None
    if args.val:
        val = [r for r in read_manifests(args.val) if r.modality == "text" and r.label in LABEL7 and r.text]
        card["val"] = {m: {k: r[k] for k in ("n", "accuracy", "weighted_f1", "uar", "per_class_recall")}
                       for m, r in dev_reports(model, val).items()}
    out = args.out or WEIGHTS
    out.parent.mkdir(parents=True, exist_ok=True)
    card["command"] = (f"python -m emoweb tune-text --data {args.data}" + (f" --val {args.val}" if args.val else "")
                       + f" --tuned-layers {args.tuned_layers} --epochs {args.epochs} --lr {args.lr} "
                       f"--rows-per-manifest {args.rows_per_manifest} --seed {args.seed} --dev-fraction {args.dev_fraction}")
    card["torch"] = torch.__version__
    model.save(out)
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({"weights": str(out), "dev": card["dev"][-1], "val": card.get("val", {})}, indent=2))
    return 0
