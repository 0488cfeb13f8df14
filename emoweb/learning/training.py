"""Shared training loop: cached features in, a checkpoint + card out.

Backbones run once per sample (FeatureStore); epochs only cost the heads. Splits keep speakers and
face identities apart: the manifest's `val` split is held out for reporting only, and early stopping
uses a `dev` split carved out of the training speakers, so no reported number was tuned on.
"""
from __future__ import annotations

import hashlib
import random
import sys
import time
from dataclasses import dataclass, field

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from emoweb.config import BUILT_CLIPS_IN_CORPUS, BUILT_CLIPS_OWN_GROUPS, DEV_FRACTION, DEV_ROWS_PER_GROUP, EPOCH_ROWS_PER_MODALITY
from emoweb.learning.augment import AudioAugment, SplicePartners
from emoweb.learning.manifests import Row
from emoweb.learning.metrics import classification_report, expected_calibration_error, selective_threshold
from emoweb.pipeline.batching import to_input
from emoweb.pipeline.features import ClipFeatures


CORPUS = "corpus "  # report keys "corpus <manifest>": the answer's report on one corpus's rows


@dataclass
class Sample:
    row: Row
    features: ClipFeatures
    split: str  # train | dev | val


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict] = field(default_factory=list)
    best_epoch: int | dict[str, int] = 0
    seconds: float = 0.0


def split_of(row: Row, seed: int = 0, dev_fraction: float = DEV_FRACTION) -> str:
    """train/dev/val by speaker: the manifest's val stays val; dev = a seeded share of train speakers
    (none with `dev_fraction` 0: a recipe chosen beforehand, e.g. by cross-validation, trains on all).
    A row's split depends on its own manifest name and speaker only."""
    if row.split in ("val", "valid", "dev", "test"):
        return "val"
    if row.speaker:
        h = int(hashlib.sha256(f"{seed}:{row.source}:{row.speaker}".encode()).hexdigest()[:8], 16)
        if (h % 1000) / 1000 < dev_fraction:
            return "dev"
    return "train"


def assign_splits(samples: list[tuple[Row, ClipFeatures]], seed: int = 0, dev_fraction: float = DEV_FRACTION) -> list[Sample]:
    """Each encoded row as a Sample with its `split_of`."""
    return [Sample(row, feats, split_of(row, seed, dev_fraction)) for row, feats in samples]


def cap_dev(samples: list[Sample], per_group: int = DEV_ROWS_PER_GROUP, seed: int = 0) -> list[Sample]:
    """At most `per_group` dev rows per (corpus, label), seeded; the other dev rows are left out (their
    speakers stay out of training). Why: with 50k text rows and 19k FER photos, 15% of the speakers is
    ~12k dev rows scored every epoch; a fixed share per corpus and label also weights every corpus the
    same in the early-stopping score and the calibration."""
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        if s.split == "dev":
            groups.setdefault((s.row.manifest, s.row.label), []).append(s)
    keep = {id(s) for items in groups.values() for s in rng.sample(items, min(per_group, len(items)))}
    return [s for s in samples if s.split != "dev" or id(s) in keep]


def balanced_epoch(samples: list[Sample], rng: random.Random, cap: int = EPOCH_ROWS_PER_MODALITY,
                   built_clips: str = BUILT_CLIPS_IN_CORPUS) -> list[Sample]:
    """One epoch's rows, balanced per modality across corpora and labels: each (manifest, label) group
    of a modality gets an equal share of that modality's rows (at most `cap` per epoch), drawn with
    replacement. Why: the corpora differ 10-fold in size (FER2013 19k photos vs 2k web photos; CREMA-D
    5.8k clips vs TESS 1.4k) and in label mix (web photos: 900 joy, 15 fear); a model must not learn
    one corpus's mix or its recording conditions as the emotion. `built_clips`: BUILT_CLIPS_IN_CORPUS, built
    clips (partial-expression) share the groups of the corpus they were made from; BUILT_CLIPS_OWN_GROUPS,
    they form groups of their own (the session-9 recipe: 30% of the face rows, six groups of twenty, eight
    fear clips drawn ~150 times an epoch, and FER2013 fell below its backbone)."""
    if built_clips not in (BUILT_CLIPS_IN_CORPUS, BUILT_CLIPS_OWN_GROUPS):
        raise ValueError(f"built_clips must be {BUILT_CLIPS_IN_CORPUS!r} or {BUILT_CLIPS_OWN_GROUPS!r}, not {built_clips!r}")
    groups: dict[tuple[str, str, str], list[Sample]] = {}
    for s in samples:
        corpus = s.row.corpus if built_clips == BUILT_CLIPS_IN_CORPUS else s.row.manifest
        groups.setdefault((s.row.modality, corpus, s.row.label), []).append(s)
    per_modality: dict[str, int] = {}
    for (mod, _, _), items in groups.items():
        per_modality[mod] = per_modality.get(mod, 0) + len(items)
    out = []
    for (mod, _, _), items in groups.items():
        n_groups = sum(1 for m, _, _ in groups if m == mod)
        target = min(per_modality[mod], cap) // n_groups
        out += [rng.choice(items) for _ in range(target)]
    rng.shuffle(out)
    return out


def batches(samples: list[Sample], size: int):
    for i in range(0, len(samples), size):
        yield samples[i : i + size]


def single_modality_batches(samples: list[Sample], size: int, rng: random.Random) -> list[list[Sample]]:
    """Batches that each hold one input modality, in shuffled order.

    For models whose branches learn independently from in-batch contrast (EmoAsst's SupCon): in a
    mixed batch the 720 RAVDESS clips are outnumbered ~4:1 by face photos, so the audio branch would
    see ~14 rows per step, too few positives per class for a stable contrastive gradient.
    """
    by_modality: dict[str, list[Sample]] = {}
    for s in samples:
        by_modality.setdefault(s.row.modality, []).append(s)
    out = [chunk for group in by_modality.values() for chunk in batches(group, size)]
    rng.shuffle(out)
    return out


@torch.no_grad()
def predict_samples(model, samples: list[Sample], dims: dict[str, int], labels: list[str], size: int = 128):
    """Model outputs for many samples, batched; returns (outputs per batch, samples in order)."""
    model.eval()
    outs = []
    for chunk in batches(samples, size):
        outs.append(model(to_input([s.features for s in chunk], dims), labels))
    return outs


def evaluate(model, samples: list[Sample], dims: dict[str, int], labels: list[str]) -> dict:
    """Per-modality and fused reports on `samples` (the modality a row has decides where it counts)."""
    return reports(samples, predict_samples(model, samples, dims, labels), labels)


def reports(samples: list[Sample], outs: list, labels: list[str]) -> dict:
    """The reports of `evaluate` from the model's outputs (`predict_samples`' batches) on `samples`: the
    answer ("fused"), each sense alone on the rows that have it (text left out), each corpus's answer."""
    y_true, y_pred = [], []
    per_mod: dict[str, tuple[list[str], list[str]]] = {}
    per_corpus: dict[str, tuple[list[str], list[str]]] = {}
    for chunk, out in zip(batches(samples, 128), outs):
        for i, s in enumerate(chunk):
            y_true.append(s.row.label)
            y_pred.append(labels[int(out.probs[i].argmax())])
            t, p = per_corpus.setdefault(f"{CORPUS}{s.row.manifest}", ([], []))
            t.append(y_true[-1])
            p.append(y_pred[-1])
            for mod, probs in out.modality_probs.items():
                if s.features.modalities.get(mod) and mod != "text":
                    t, p = per_mod.setdefault(mod, ([], []))
                    t.append(s.row.label)
                    p.append(labels[int(probs[i].argmax())])
    report = {"fused": classification_report(y_true, y_pred, labels)}
    report.update({m: classification_report(t, p, labels) for m, (t, p) in per_mod.items()})
    report.update({c: classification_report(t, p, labels) for c, (t, p) in per_corpus.items()})
    return report


def dev_score(report: dict) -> float:
    """Early-stopping criterion: mean UAR over the corpora evaluated (each corpus counts the same, robust
    to class imbalance); over the modalities for a report without corpora."""
    corpora = [r["uar"] for k, r in report.items() if k.startswith(CORPUS) and r["uar"] is not None]
    values = corpora or [r["uar"] for k, r in report.items() if k != "fused" and r["uar"] is not None]
    return sum(values) / len(values) if values else 0.0


class BranchSelector:
    """Per-branch early stopping for models whose modality branches share no parameters (EmoAsst)."""

    def __init__(self, parts: dict[str, torch.nn.Module]):
        self.parts = parts
        self.best: dict[str, float] = {}
        self.best_epoch: dict[str, int] = {}
        self.state: dict[str, dict] = {}

    def update(self, report: dict, epoch: int) -> bool:
        improved = False
        for modality, module in self.parts.items():
            uar = report.get(modality, {}).get("uar")
            if uar is not None and uar > self.best.get(modality, -1.0):
                self.best[modality], self.best_epoch[modality] = uar, epoch
                self.state[modality] = {k: v.detach().clone() for k, v in module.state_dict().items()}
                improved = True
        return improved

    def restore(self) -> None:
        for modality, state in self.state.items():
            self.parts[modality].load_state_dict(state)


def train(
    model,
    samples: list[Sample],
    dims: dict[str, int],
    labels: list[str],
    param_groups: list[dict],
    epochs: int = 40,
    batch_size: int = 64,
    epoch_rows: int = EPOCH_ROWS_PER_MODALITY,
    patience: int = 6,
    seed: int = 0,
    weight_decay: float = 0.01,
    ema_decay: float = 0.0,
    augment: AudioAugment | None = None,
    built_clips: str = BUILT_CLIPS_IN_CORPUS,
) -> TrainResult:
    """AdamW over `param_groups`, early stopping on dev UAR; keeps the best epoch's weights.

    `ema_decay` > 0: what is scored and kept is an exponential moving average of the weights (updated
    every step), not the weights of the last step. On a few hundred clips the dev score of the raw
    weights jumps by several points from one epoch to the next, so the epoch it picks is partly luck;
    the average moves slowly and generalises better to unseen speakers. Without a dev split (all
    training speakers used for training), every epoch runs and the last weights are kept.
    `augment`: varies each training clip's audio tokens per step (never the dev or val clips); its
    splice partners are training clips only. `built_clips`: how `balanced_epoch` groups built clips."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    train_set = [s for s in samples if s.split == "train"]
    dev_set = [s for s in samples if s.split == "dev"]
    label_ids = {label: i for i, label in enumerate(labels)}
    partners = SplicePartners((s.row, s.features) for s in train_set) if augment and augment.splice else None
    opt = torch.optim.AdamW(param_groups, weight_decay=weight_decay)
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True) if ema_decay else None
    scored = averaged.module if averaged is not None else model
    result = TrainResult(model)
    best, best_state, stale = -1.0, None, 0
    branches = BranchSelector(scored.branches() if hasattr(scored, "branches") else {})
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        epoch_samples = balanced_epoch(train_set, rng, epoch_rows, built_clips)
        losses = []
        if getattr(model, "single_modality_batches", False):
            epoch_batches = single_modality_batches(epoch_samples, batch_size, rng)
        else:
            epoch_batches = list(batches(epoch_samples, batch_size))
        bar = tqdm(epoch_batches, desc=f"epoch {epoch}", unit="batch", leave=False)
        for chunk in bar:
            feats = [augment(s.features, rng, generator, partners.pick(s.row, rng) if partners else None) if augment else s.features
                     for s in chunk]
            x = to_input(feats, dims)
            y = torch.tensor([label_ids[s.row.label] for s in chunk])
            loss = model.training_loss(x, y, [s.row for s in chunk])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if averaged is not None:
                averaged.update_parameters(model)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        result.history.append({"epoch": epoch, "loss": sum(losses) / max(1, len(losses))})
        if not dev_set:
            print(f"epoch {epoch}: loss {result.history[-1]['loss']:.4f}", file=sys.stderr, flush=True)
            continue
        report = evaluate(scored, dev_set, dims, labels)
        score = dev_score(report)
        result.history[-1].update(dev_uar=score, **{f"dev_uar_{m}": r["uar"] for m, r in report.items() if m != "fused"})
        print(f"epoch {epoch}: loss {result.history[-1]['loss']:.4f} dev UAR {score:.4f}", file=sys.stderr, flush=True)
        improved = branches.update(report, epoch)
        if score > best:
            best, result.best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in scored.state_dict().items()}
        stale = 0 if (score >= best or improved) else stale + 1
        if stale >= patience:
            break
    if not dev_set:
        result.best_epoch = len(result.history)
    elif branches.parts:  # independent branches: each keeps the weights of its own best dev epoch
        branches.restore()
        result.best_epoch = dict(branches.best_epoch)
    elif best_state is not None:
        scored.load_state_dict(best_state)
    if scored is not model:
        model.load_state_dict(scored.state_dict())
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


def data_card(samples: list[Sample]) -> dict:
    """What the model saw: counts per manifest, split and label (for the checkpoint card)."""
    card: dict[str, dict] = {}
    for s in samples:
        key = f"{s.row.manifest}:{s.split}"
        card.setdefault(key, {})
        card[key][s.row.label] = card[key].get(s.row.label, 0) + 1
    return card


NOT_SURE_TARGET = 0.8  # the selective accuracy the "not sure" threshold is chosen for


def calibrate(model, samples: list[Sample], dims: dict[str, int], labels: list[str]) -> dict:
    """Fit the model's calibration on `samples` (the dev rows; every corpus of a kind weighted the same):
    a temperature per input kind (audio, visual, text, audio+visual, ...), growing with the row's logit spread
    to a fitted power (`models.calibration.fit_spread_temperature`), and, for a kind with several
    senses that each give their own decision, reliability weights (`models.calibration.fit_fusion`); and
    say what they did: ECE per corpus before and after, and the calibrated confidence below which an
    answer is "not sure" for NOT_SURE_TARGET selective accuracy, with its coverage. For the card's `calibration`."""
    from models.cache import logits_from_probs
    from models.calibration import SENSE_FLOOR, calibrated_logits, fit_fusion, fit_spread_temperature, input_kind

    outs = predict_samples(model, samples, dims, labels)
    logits = torch.cat([out.logits for out in outs])
    # each sense's own decision (a batch without that sense has none: uniform, which no weight can move)
    senses = {m: logits_from_probs(torch.cat([out.modality_probs.get(m, torch.full_like(out.probs, 1.0 / len(labels))) for out in outs]),
                                   SENSE_FLOOR)
              for m in ("audio", "visual", "text") if any(m in out.modality_probs for out in outs)}
    decided = logits.std(-1) > 1e-6  # a model that reads none of a row's senses gives no decision: nothing to calibrate
    samples, logits = [s for s, d in zip(samples, decided.tolist()) if d], logits[decided]
    senses = {m: v[decided] for m, v in senses.items()}
    targets = torch.tensor([labels.index(s.row.label) for s in samples])
    corpora = [s.row.manifest for s in samples]
    kinds = [input_kind(s.features.modalities) for s in samples]
    fitted: dict = {"temperature": {}, "spread_power": {}, "fusion": {}}
    for kind in sorted(set(kinds)):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        counts = {c: sum(1 for i in rows if corpora[i] == c) for c in {corpora[i] for i in rows}}
        weights = torch.tensor([1.0 / counts[corpora[i]] for i in rows])
        fitted["temperature"][kind], fitted["spread_power"][kind] = fit_spread_temperature(logits[rows], targets[rows], weights)
        own = [m for m in kind.split("+") if m in senses]
        if len(own) > 1:  # several senses, each with its own decision: how far to trust each
            fitted["fusion"][kind] = fit_fusion(logits[rows], {m: senses[m][rows] for m in own}, targets[rows], weights)
    if not fitted["fusion"]:
        del fitted["fusion"]
    report: dict = {**fitted, "fitted_on": "dev rows, per input kind, every corpus weighted the same", "ece_dev": {}}
    final = calibrated_logits(logits, senses, kinds, fitted)
    for name, scores in (("before", logits), ("after", final)):
        probs = scores.softmax(-1)
        conf, hit = probs.max(-1).values, probs.argmax(-1) == targets
        for corpus in sorted(set(corpora)):
            rows = torch.tensor([c == corpus for c in corpora])
            report["ece_dev"].setdefault(corpus, {})[name] = round(expected_calibration_error(conf[rows].tolist(), hit[rows].tolist()), 4)
    threshold, coverage = selective_threshold(conf.tolist(), hit.tolist(), NOT_SURE_TARGET)  # on the calibrated answers
    report["not_sure"] = {"below": round(threshold, 4), "target_accuracy": NOT_SURE_TARGET, "coverage_dev": round(coverage, 4)}
    return report
