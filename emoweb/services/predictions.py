"""Answers from stored features: each model's base logits plus the profile's active few-shot cache.

Predictions use a profile's active snapshots; the copy loaded in this process (`ServiceContext.caches`)
is reloaded whenever the active snapshot id changes (a rebuild in any process). A snapshot refers to its
clips' stored features, read through the feature memo.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from emoweb.services import cachearrays, cachebuild
from emoweb.services.context import ServiceContext
from emoweb.services.modelinfo import in_model_order
from emoweb.services.records import NOTHING_READ, UNKNOWN_LABELS, ModelPrediction
from emoweb.services.store import CaregiverRepository
from models.cache import FewShotCache
from storage.schema import CacheSnapshot, Profile


def answers(predictions: dict[str, ModelPrediction]) -> list[tuple[str, ModelPrediction]]:
    """The predictions worth storing: a clip with nothing to recognise gets none, so its queue row
    shows no answers rather than a uniform guess."""
    return [(model, p) for model, p in predictions.items() if p.decided]


def _margin(probs: Sequence[float]) -> float:
    top = sorted(probs, reverse=True)
    return float(top[0] - (top[1] if len(top) > 1 else 0.0))


class Predictions:
    """Scoring stored arrays against the active caches, and recording the answers."""

    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx

    def version(self, p: ModelPrediction) -> str:
        """The stored model version of an answer: the backbone profile, and the cache snapshot it used."""
        return self.ctx.backbone + (f"+cache{p.cache_snapshot}" if p.cache_snapshot is not None else "")

    def record(self, clip_id: int, predictions: dict[str, ModelPrediction]) -> None:
        """Store an answer only when it may differ from the latest stored one (other model version or cache)."""
        repo = self.ctx.repo
        latest = repo.latest_predictions(clip_id)
        for model, p in answers(predictions):
            old = latest.get(model)
            if old is None or old.model_version != self.version(p) or old.probs != p.probs:
                repo.add_prediction(clip_id, model, p.probs, self.version(p))

    def active_caches(self, prof: Profile) -> dict[str, tuple[int, FewShotCache, list[int]]]:
        """{model: (snapshot id, cache, clip id per cache row)} of a profile's active snapshots;
        reloaded when the active id changed since it was loaded (a rebuild in any process)."""
        ctx = self.ctx
        active = ctx.repo.active_snapshot_ids(prof.id)
        out = {}
        with ctx.lock:
            for key in [k for k in ctx.caches if k[0] == prof.id and active.get(k[1]) != ctx.caches[k][0]]:
                del ctx.caches[key]
            for model, snapshot_id in active.items():
                hit = ctx.caches.get((prof.id, model))
                if hit is None:
                    snapshot = ctx.repo.get_snapshot(snapshot_id)
                    if snapshot is None:  # replaced between the two reads
                        continue
                    hit = (snapshot_id, *self._load_snapshot(prof, model, snapshot))
                    ctx.caches[(prof.id, model)] = hit
                for label in prof.label_set:  # labels added since the rebuild: columns with no entries
                    hit[1].add_label(label)
                out[model] = hit
        return out

    def _load_snapshot(self, prof: Profile, model: str, snapshot: CacheSnapshot) -> tuple[FewShotCache, list[int]]:
        """A snapshot's cache: re-assembled from its clips' stored features, or (written before snapshots
        referred to features) from the keys it holds."""
        arrays = snapshot.payload_arrays()
        if cachebuild.holds_keys(arrays):
            return cachebuild.from_snapshot(arrays, snapshot.labels, snapshot.hyper)
        backbone = snapshot.hyper.get("backbone_profile", self.ctx.backbone)
        clip_ids = arrays.get("clip_ids", np.zeros(0, np.int64)).tolist()
        features = self.ctx.features
        with self.ctx.sessions() as session, session.begin(), features.lock:
            repo = CaregiverRepository(session)
            repo.begin_snapshot()
            stored = features.read(repo, prof.id, backbone, clip_ids)
            return cachebuild.from_features(model, arrays, snapshot.labels, snapshot.hyper, stored.arrays)

    def score(self, prof: Profile, stored: dict[str, np.ndarray], clip_id: int | None = None) -> dict[str, ModelPrediction]:
        """Each stored model's answer from its stored arrays plus the profile's active cache; a labelled clip
        (`clip_id`) is answered without its own cached entry, so its answer is not its label read back."""
        caches = self.active_caches(prof)
        by_model: dict[str, dict[str, np.ndarray]] = {}
        for name, array in stored.items():
            model, part = cachearrays.split_name(name)
            by_model.setdefault(model, {})[part] = array
        predictions = {}
        for model, parts in in_model_order(by_model).items():
            if cachearrays.LOGITS not in parts:
                continue
            base = torch.from_numpy(np.asarray(parts[cachearrays.LOGITS], np.float32).reshape(-1))
            base_labels = list(prof.label_set[: base.numel()])
            base = base[: len(base_labels)]
            query = {m: torch.from_numpy(np.asarray(a, np.float32).reshape(1, -1)) for m, a in parts.items() if m != cachearrays.LOGITS}
            read = cachearrays.has_modality(parts)
            snapshot_id, cache, clip_ids = caches.get(model, (None, None, [])) if read else (None, None, [])
            cache, clip_ids = cachebuild.without_clip(cache, clip_ids, clip_id)
            labels, logits, nearest = cachebuild.score(base, base_labels, query, cache, clip_ids)
            used = snapshot_id if cache is not None and cache.adjusts else None
            # a model that knows none of the profile's labels gives each the same logit (`ingest._align`): a
            # guess from nothing, so no answer, until the profile's labelled clips (its cache) teach it
            knows = float(base.max() - base.min()) > 1e-6 or used is not None
            decided = read and knows
            probs = logits.softmax(-1)[0].tolist()
            predictions[model] = ModelPrediction(
                model=model, label=labels[int(np.argmax(probs))] if decided else None, probs=dict(zip(labels, probs)),
                margin=_margin(probs), cache_snapshot=used, nearest=nearest[0], decided=decided,
                why_not="" if decided else NOTHING_READ if not read else UNKNOWN_LABELS,
            )
        return predictions

    @staticmethod
    def apply_to_outputs(outputs: Any, predictions: dict[str, ModelPrediction], prof: Profile) -> None:
        """Make the full model outputs (an `inference.Prediction`, shown by the UI) carry the cached answer too."""
        for model, out in outputs.outputs.items():
            p = predictions.get(model)
            if p is None or p.cache_snapshot is None:
                continue
            out.labels = list(p.probs)
            out.probs = torch.tensor([list(p.probs.values())])
            out.logits = out.probs.clamp_min(1e-12).log()
            out.similarity["nearest_labelled"] = {f"clip {n['clip_id']} ({n['label']})": n["similarity"] for n in p.nearest}
            out.notes.append(f"few-shot cache of profile {prof.name!r} applied (snapshot {p.cache_snapshot})")
