"""What the Models tab shows about each model the registry knows: whether its code is present, whether
this backbone profile has a shipped checkpoint, and the card of the loaded model (the UI only calls
services; the registry imports torch, so it is imported on first use).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ModelStatus:
    """One registry model under the Predictor's backbone profile."""

    name: str
    code_present: bool  # its module imports (the registry's `available`)
    checkpoint_present: bool  # weights and JSON card both on disk for this profile
    card: dict[str, Any] | None  # the loaded model's card (a copy); None when it is not loaded


def display_name(name: str) -> str:
    """The name a person reads for registry model `name` ("sem_mbt" -> "MER-SEM-MBT"); an unknown name as given."""
    from models import DISPLAY_NAMES

    return DISPLAY_NAMES.get(name, name)


def per_label_text(counts: Mapping[str, int]) -> str:
    """A cache's clips per label as a person reads them: 'joy 3, anger 2' ('none' when empty)."""
    return ", ".join(f"{label} {n}" for label, n in counts.items()) or "none"


def holds_clips(snapshots: list[dict]) -> bool:
    """Whether any of these cache snapshots (`CaregiverService.snapshots`) holds a labelled clip: a rebuild
    with no labels yet makes empty ones."""
    return any(sum((s.get("n_per_label") or {}).values()) for s in snapshots)


def changes_text(changes: int, rebuilt: bool) -> str:
    """Whether a profile's cache knows its labels, as the Label tab and `cache show` say it
    (`CaregiverService.labels_since_rebuild`; `rebuilt`: a cache holding clips exists, `holds_clips`)."""
    if not changes:
        return "The cache knows every label given." if rebuilt else "No labels yet: label clips, then rebuild the cache."
    since = "since the cache was last rebuilt" if rebuilt else "and no cache built yet"
    return f"{changes} label change{'s' if changes != 1 else ''} {since}: rebuild the cache to use them."


def minute_text(iso: str) -> str:
    """An ISO 8601 UTC time to the minute, as a person reads it: '2026-12-02 06:57 UTC'."""
    return f"{iso[:16].replace('T', ' ')} UTC"


def in_model_order(per_model: Mapping[str, T]) -> dict[str, T]:
    """`per_model` ordered as the registry lists the models (EmoAsst, MER-CLIP, MER-SEM-MBT, Foal-Net), as
    `predict`, the README and the Models tab name them, whatever order storage returned them in; an unknown
    name last, by name."""
    from models import MODELS

    order = list(MODELS)
    return dict(sorted(per_model.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))


def model_statuses(predictor: Any) -> list[ModelStatus]:
    """Every model of the registry, in its order, for `predictor` (an `emoweb.pipeline.inference.Predictor`).
    Loads each available model once (what `predictor.model` does), to read its card."""
    from models import registry

    available = set(registry.available())
    out = []
    for name in registry.MODELS:
        weights, card_path = registry.checkpoint_paths(name, predictor.backbones.name, predictor.checkpoint_root)
        loaded = predictor.model(name) if name in available else None
        out.append(ModelStatus(name, name in available, weights.is_file() and card_path.is_file(),
                               dict(loaded[1]) if loaded else None))
    return out
