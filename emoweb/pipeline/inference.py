"""Run every available model on one clip with the backbones run once (the shared features).

`Predictor` is created once per process: backbones load lazily, models load from their shipped
checkpoints (a model without one is absent, never faked), and a per-profile few-shot cache can be
plugged in per call.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from emoweb.config import Settings, get_settings
from emoweb.errors import EmoWebError
from emoweb.pipeline import media
from emoweb.pipeline.batching import to_input
from emoweb.pipeline.features import ClipFeatures, FeatureExtractor, Progress
from models import LABEL7, named_models, registry
from models.cache import FewShotCache
from models.output import ModelOutput


def reads_an_input(features: ClipFeatures, output: ModelOutput) -> bool:
    """Whether a model's output read an input the clip has: one that reads none of them (Foal-Net, which
    reads no text, on a typed text) gives uniform probabilities, a guess from nothing, not an answer.
    `output` may be a batch's: its senses are the model's, the clip's inputs are its own."""
    return any(features.modalities.get(m, False) for m in output.modality_probs)


@dataclass
class Prediction:
    """All models' outputs for one clip, with the shared features and per-model latency."""

    features: ClipFeatures
    outputs: dict[str, ModelOutput]
    latency: dict[str, float] = field(default_factory=dict)

    @property
    def decided(self) -> bool:
        """False when the clip had no voice, no frames and no words: every model's answer is uniform."""
        return any(self.features.modalities.values())

    def model_decided(self, name: str) -> bool:
        """Whether model `name` read an input the clip has (`reads_an_input`)."""
        return reads_an_input(self.features, self.outputs[name])

    def sense_decisions(self) -> dict[str, dict[str, dict[str, float]]]:
        """{model: {sense: {label: p}}}: each deciding model's own decision per sense the clip has (the
        headline's check that face and voice point the same way)."""
        return {name: {m: dict(zip(out.labels, probs[0].tolist())) for m, probs in out.modality_probs.items()
                       if self.features.modalities.get(m, False)}
                for name, out in self.outputs.items() if self.model_decided(name)}

    def to_summary(self) -> dict:
        models = {}
        for name, out in self.outputs.items():
            models[name] = {
                "label": out.label if self.model_decided(name) else None,
                "probs": {lab: round(float(p), 4) for lab, p in zip(out.labels, out.probs[0])},
                "modality_probs": {
                    m: {lab: round(float(p), 4) for lab, p in zip(out.labels, probs[0])}
                    for m, probs in out.modality_probs.items()
                },
                "attention": {
                    k: {"shape": list(w.shape), "axes": list(axes), "ticks": {a: t[0] if t and isinstance(t[0], list) else t for a, t in ticks.items()}}
                    for k, (w, axes, ticks) in out.attention.items()
                },
                "similarity": out.similarity,
                "notes": out.notes,
                "latency_s": round(self.latency.get(name, 0.0), 4),
            }
        return {"clip": self.features.to_summary(), "models": models}


def shipped_root(given: str | Path | None = None) -> Path:
    """Where the shipped checkpoints live: `given`, else EMOWEB_CHECKPOINT_ROOT, else models/checkpoints."""
    return Path(given or os.environ.get("EMOWEB_CHECKPOINT_ROOT") or registry.CHECKPOINT_ROOT)


class Predictor:
    """Backbones + models of one profile, loaded once per process."""

    def __init__(
        self, settings: Settings | None = None, labels: list[str] | None = None, checkpoint_root: str | Path | None = None
    ):
        self.settings = settings or get_settings()
        self.checkpoint_root = shipped_root(checkpoint_root)
        self.extractor = FeatureExtractor(self.settings)
        self.backbones = self.extractor.backbones
        self.labels = list(labels or LABEL7)
        self._models: dict[str, tuple[torch.nn.Module, dict]] = {}
        self._lock = threading.Lock()

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.backbones.text(texts).embedding

    def model(self, name: str) -> tuple[torch.nn.Module, dict] | None:
        """The shipped model and its card; None when it has no checkpoint for this profile."""
        with self._lock:
            if name not in self._models:
                loaded = registry.load(name, self.backbones.name, self.checkpoint_root)
                if loaded is None and self.backbones.untrained:  # paper profile on random weights
                    loaded = (registry.build(name, self.backbones.dims).eval(), {"untrained": True})
                if loaded is None:
                    return None
                model, card = loaded
                model.attach_text_encoder(self.encode_text, self.backbones.text_encoder)
                self._models[name] = (model.to(self.backbones.device), card)
            return self._models[name]

    def confident_at(self, names: list[str], labels: list[str] | None = None) -> dict[str, float]:
        """{model: the calibrated probability from which its answer counts as confident} for the models
        whose card has a calibration (`headline`'s `confident_at`). `labels`: the labels the answers are over
        (a caregiver's own set); a model calibrated on other labels has no level for them, so it is left out."""
        out = {}
        for name in names:
            loaded = self.model(name)
            if loaded is None or (labels is not None and set(labels) != set(loaded[0].config.labels)):
                continue
            below = (loaded[1].get("calibration") or {}).get("not_sure", {}).get("below")
            if below is not None:
                out[name] = float(below)
        return out

    def model_names(self, spec: str = "all") -> list[str]:
        if spec == "all":
            names = registry.available()
        else:
            try:
                names = named_models(spec)
            except ValueError as exc:  # an unknown name
                raise EmoWebError(str(exc)) from None
        return [n for n in names if self.model(n) is not None]

    def required_models(self, spec: str = "all") -> list[str]:
        """`model_names(spec)`, or EmoWebError when none of them is trained for this profile."""
        names = self.model_names(spec)
        if not names:
            raise EmoWebError("no trained model is available for this profile")
        return names

    def run_models(
        self,
        features: ClipFeatures,
        names: list[str],
        caches: dict[str, FewShotCache] | None = None,
        progress: Progress | None = None,
        labels: list[str] | None = None,
    ) -> Prediction:
        """`labels`: the label texts to score (default `self.labels`); zero-shot models take any."""
        x = to_input([features], self.backbones.dims).to(self.backbones.device)
        outputs, latency = {}, {}
        for name in names:
            if progress:
                progress(name)
            model, _ = self.model(name)
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model(x, list(labels or self.labels))
            cache = (caches or {}).get(name)
            if cache is not None and len(cache):
                apply_cache(out, cache)
            latency[name] = time.perf_counter() - t0
            outputs[name] = out
        return Prediction(features, outputs, latency)

    def predict(
        self, path: str | Path, models: str = "all", caches=None, progress: Progress | None = None, text: str | None = None
    ) -> Prediction:
        """Every model's answer about a clip; `text` (when given) replaces its transcript (`with_text`).
        A file that is no media (`media.check_media`) is refused before any model loads."""
        media.check_media(path)
        names = self.required_models(models)
        features = self.extractor(path, progress)
        if text is not None:
            features = self.extractor.with_text(features, text, progress)
        return self.run_models(features, names, caches, progress)

    def predict_text(self, text: str, models: str = "all", progress: Progress | None = None) -> Prediction:
        """Every model's answer from a text alone, through the same text path as a clip's transcript
        (`FeatureExtractor.from_text`). Raises EmoWebError for an empty text or without a trained model."""
        names = self.required_models(models)
        return self.run_models(self.extractor.from_text(text), names, progress=progress)

    def predict_transcript(
        self, features: ClipFeatures, text: str, models: str = "all", progress: Progress | None = None
    ) -> Prediction:
        """Every model's answer about an analysed clip (or text) with `text` as its words (typed, or a person's
        correction of the transcript): only the text encoder runs again (`FeatureExtractor.with_text`)."""
        names = self.required_models(models)
        return self.run_models(self.extractor.with_text(features, text, progress), names, progress=progress)

    def predict_person(
        self, features: ClipFeatures, person: int, models: str = "all", progress: Progress | None = None
    ) -> Prediction:
        """Every model's answer about another face of an analysed clip: `person` numbers
        `features.face_tracks` (1 = the main person). Only the faces and the visual encoder run again (on the
        kept frames); the voice and words are the clip's, which the result's notes say may be someone
        else's. Raises EmoWebError for a clip without that person or without a trained model."""
        names = self.required_models(models)
        return self.run_models(self.extractor.with_person(features, person, progress), names, progress=progress)


def apply_cache(out: ModelOutput, cache: FewShotCache, k: int = 5) -> None:
    """Add the few-shot cache's affinity to the model's base logits and record the nearest entries."""
    query = {"fused": out.embedding, **out.modality_embeddings}
    query = {m: q for m, q in query.items() if m in cache.modalities}
    if not query:
        return
    logits = cache.logits(out.logits, query, base_labels=out.labels)
    out.labels = list(cache.labels)
    out.probs = logits.softmax(-1)
    out.logits = logits
    out.similarity["nearest_labelled"] = {
        f"#{idx} {label}": round(sim, 4) for idx, label, sim in cache.nearest(query, k)[0]
    }
