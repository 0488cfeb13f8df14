"""Plain result types of the caregiver services: what the CLI prints, the UI shows and the API returns.

Strings (names, labels, notes) are as stored, never escaped: whoever renders them escapes them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emoweb.pipeline.inference import Prediction


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _Record:
    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))  # type: ignore[call-overload]


@dataclass(frozen=True)
class ProfileInfo(_Record):
    id: int
    name: str
    owner: str | None
    labels: list[str]
    created: datetime


@dataclass(frozen=True)
class ClipInfo(_Record):
    id: int
    profile_id: int
    sha256: str
    original_name: str
    media_path: str  # relative to the data dir
    kind: str
    source: str
    duration: float | None
    created: datetime
    notes: list[str] = field(default_factory=list)  # what decoding noticed ("no face found"), stored with the clip


NOTHING_READ = "nothing here that it reads"  # Foal-Net on a typed text; any model on a clip with no voice, face or words
UNKNOWN_LABELS = "it knows none of this profile's labels yet: label a few clips of each, then rebuild the cache"


@dataclass(frozen=True)
class ModelPrediction(_Record):
    """One model's answer on one clip, with the profile's cache applied when it has one."""

    model: str
    label: str | None  # None: no decision (see `decided`)
    probs: dict[str, float]
    margin: float  # top1 - top2
    cache_snapshot: int | None = None  # id of the cache snapshot used; None: the bare model
    nearest: list[dict[str, Any]] = field(default_factory=list)  # closest labelled clips in the cache
    decided: bool = True  # False: no decision, so `label` is None; `why_not` says why
    why_not: str = ""  # why no decision: NOTHING_READ, or UNKNOWN_LABELS (a caregiver's own labels it cannot score yet)


@dataclass(frozen=True)
class ClipResult(_Record):
    """A clip and every model's answer. `outputs` (full ModelOutputs: attention, similarities) is
    set only when the media was decoded in this call; otherwise answers come from stored features.
    `senses`: each deciding model's own decision per sense the clip has, {model: {sense: {label: p}}}, as
    ingest stored it (what the headline's face-against-voice rule reads); None: not known, the clip was
    stored before they were kept."""

    clip: ClipInfo
    new: bool
    predictions: dict[str, ModelPrediction]
    outputs: Prediction | None = None
    senses: dict[str, dict[str, dict[str, float]]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "clip": self.clip.to_dict(),
            "new": self.new,
            "predictions": {m: p.to_dict() for m, p in self.predictions.items()},
            "senses": self.senses,
        }


@dataclass(frozen=True)
class CorrectionInfo(_Record):
    id: int
    clip_id: int
    label: str
    annotator: str
    note: str
    created: datetime
    replaced: str | None = None  # from `record_correction`: the clip's label before, when this one differs from it
    unchanged: bool = False  # from `record_correction`: the clip already had this label (and no note came): nothing written
    undoes: int | None = None  # an undo row: the id of the correction it withdrew (`label` is that correction's)


@dataclass(frozen=True)
class QueueEntry(_Record):
    clip_id: int
    original_name: str
    created: datetime
    label: str | None  # current label; None: not labelled yet
    top_labels: dict[str, str]  # model -> top label of its latest prediction
    margin: float | None  # smallest top1 - top2 margin among the models
    disagree: bool  # the models name different labels, or the face and the voice differ (`senses`)
    senses: str | None = None  # "the voice says anger, the face says joy" when they differ (`headline.sense_conflict`)
    models_differ: bool = False  # the models' top labels differ (what DISAGREE / "models differ" say)


@dataclass(frozen=True)
class ModelRebuild(_Record):
    """What one model's cache rebuild did: the UI's "Rebuild cache" result."""

    model: str
    snapshot_id: int
    n: int  # cached examples (labelled clips with stored features)
    n_per_label: dict[str, int]
    alpha: float
    beta: float
    tuning: str  # how alpha/beta were set: "cv" (leave-one-out now), "reused" (from the last one), "careful" (too few clips to judge), "default"
    before: float | None  # leave-one-out accuracy on the labelled clips: model alone
    after: float | None  # ... model + this cache (each clip's own entry excluded)
    skipped: int  # labelled clips without stored features for this model (never re-encoded)
    seconds: float  # this model's share: load and commit (shared by all models) + assemble + build + tune + loo + save
    timings: dict[str, float] = field(default_factory=dict)
    scored: int | None = None  # clips `before`/`after` were measured on: all, or a seeded subset of 500 above that
    active: bool = True  # whether answers now use this cache (False: kept off, see `outcome`)
    outcome: str = ""  # what the rebuild did, in a caregiver's words (`cachebuild.outcome`)
    method: str = ""  # what answers use: "adapter" (fitted), "cache" (votes), "careful", "off"
    judged: bool = False  # enough labelled clips to measure `before`/`after` (`cachebuild.too_few_to_judge`); False: they mean nothing


@dataclass(frozen=True)
class ImportReport(_Record):
    imported: int  # corrections written
    unchanged: int  # rows whose label already was the clip's current label
    unmatched: list[str]  # sha256 (and name) of rows that match no clip of the profile
    refused: list[str]  # rows refused, with the reason
