"""ORM tables. The migrations in `migrations/versions/` create exactly these; a test checks they agree.

No ORM relationships: every read goes through `Repository`, and deletes cascade in the
database (ON DELETE CASCADE), so removing a profile never loads its clips into memory.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .arrays import from_blob, unpack

KINDS = ("video", "audio", "image")
SOURCES = ("upload", "record", "import")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


# Deterministic constraint names, so later migrations (batch mode on SQLite) can refer to them.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON, list[int]: JSON}


# Ids that leave the database (file names, the browser, the CLI, kept caches) are never given to a new row:
# SQLite would otherwise reuse the id of a deleted last row, so a stale page or command could reach a new clip
# of someone else. PostgreSQL's sequences never reuse one. Migration 0004 applies this to existing files; a
# later migration that rebuilds one of these tables on SQLite (batch mode) must pass it as table_kwargs.
NEVER_REUSED = {"sqlite_autoincrement": True}


def _fk(target: str) -> Any:
    return ForeignKey(target, ondelete="CASCADE")


class Profile(Base):
    """A child or a setting: its own clips, labels and caches."""

    __tablename__ = "profiles"
    # names are unique per owner (profiles without an owner count as one owner)
    __table_args__ = (Index("uq_profiles_owner_name", text("coalesce(owner, '')"), "name", unique=True), NEVER_REUSED)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # login user name, or a visitor's "visitor:<hash of the browser's owner key>"; None: shared
    owner: Mapped[str | None] = mapped_column(String(200), index=True)
    label_set: Mapped[list[str]]
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_active: Mapped[datetime] = mapped_column(default=utcnow)  # its owner's last request (public demos)


class Clip(Base):
    """One uploaded/recorded media file; `sha256` recognises a re-upload within a profile."""

    __tablename__ = "clips"
    __table_args__ = (
        UniqueConstraint("profile_id", "sha256"),
        CheckConstraint(f"kind IN {KINDS}", name="kind"),
        CheckConstraint(f"source IN {SOURCES}", name="source"),
        NEVER_REUSED,
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    profile_id: Mapped[int] = mapped_column(_fk("profiles.id"))
    sha256: Mapped[str] = mapped_column(String(64))
    media_path: Mapped[str] = mapped_column(String(500))  # relative to the data dir
    original_name: Mapped[str] = mapped_column(String(500), default="")
    duration: Mapped[float | None] = mapped_column(Float)  # seconds
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    created: Mapped[datetime] = mapped_column(default=utcnow)
    # what decoding noticed ("only the first 60 s were analysed", "no face found"), so a stored clip's answer
    # carries the same notes as when it was first analysed
    notes: Mapped[list[str]] = mapped_column(default=list, server_default=text("'[]'"))


class ClipFeature(Base):
    """An encoder output of one clip, so a cache rebuild never re-encodes media."""

    __tablename__ = "clip_features"
    __table_args__ = (UniqueConstraint("clip_id", "backbone_profile", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    clip_id: Mapped[int] = mapped_column(_fk("clips.id"))
    backbone_profile: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    dtype: Mapped[str] = mapped_column(String(32))
    shape: Mapped[list[int]]
    data: Mapped[bytes] = mapped_column(LargeBinary)

    def array(self) -> np.ndarray:
        return from_blob(self.data, self.dtype, self.shape)


class ClipSenses(Base):
    """One model's own decision per sense it read (face, voice, words) on one clip, as ingest computed it,
    so a stored clip is worded by the same face-against-voice rule as a fresh one. A table of its own:
    every `clip_features` row is a cache key or base logits, and these must never become either."""

    __tablename__ = "clip_senses"
    __table_args__ = (UniqueConstraint("clip_id", "backbone_profile", "model"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    clip_id: Mapped[int] = mapped_column(_fk("clips.id"))
    backbone_profile: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(100))
    senses: Mapped[dict[str, Any]]  # {sense: {label: probability}}; {} when the model read none of its senses


class Prediction(Base):
    """One model's answer on one clip; `margin` (top1 - top2) ranks the labelling queue."""

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_clip_id_model", "clip_id", "model"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    clip_id: Mapped[int] = mapped_column(_fk("clips.id"))
    model: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(100), default="")
    label: Mapped[str] = mapped_column(String(200))
    probs: Mapped[dict[str, Any]]
    margin: Mapped[float] = mapped_column(Float)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Correction(Base):
    """Append-only label history; rows are never updated or deleted (except by cascade).

    Undo is a new row whose `undoes_id` points at the correction it withdraws, rather than an
    `undone` flag flipped in place: the history then also records who undid what and when,
    and UNIQUE(undoes_id) makes two concurrent undos of the same correction impossible.
    The current label of a clip is its latest correction that is neither an undo nor undone.
    """

    __tablename__ = "corrections"
    __table_args__ = (NEVER_REUSED,)
    id: Mapped[int] = mapped_column(primary_key=True)
    clip_id: Mapped[int] = mapped_column(_fk("clips.id"), index=True)
    label: Mapped[str] = mapped_column(String(200))  # for an undo row: the label withdrawn
    annotator: Mapped[str] = mapped_column(String(200), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    undoes_id: Mapped[int | None] = mapped_column(_fk("corrections.id"), unique=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class CacheSnapshot(Base):
    """A built few-shot cache. The payload lives in the row so activating it is one transaction.

    A partial unique index allows at most one active snapshot per (profile, model).
    """

    __tablename__ = "cache_snapshots"
    __table_args__ = (
        Index("ix_cache_snapshots_profile_id_model", "profile_id", "model"),
        Index(
            "uq_cache_snapshots_profile_id_model_active",
            "profile_id",
            "model",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
        NEVER_REUSED,
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    profile_id: Mapped[int] = mapped_column(_fk("profiles.id"))
    model: Mapped[str] = mapped_column(String(100))
    built_at: Mapped[datetime] = mapped_column(default=utcnow)
    n_per_label: Mapped[dict[str, Any]]
    hyper: Mapped[dict[str, Any]]  # alpha, beta, ...
    metrics: Mapped[dict[str, Any]]  # accuracy before / after, ...
    labels: Mapped[list[str]]  # one per cache row, aligned with the payload's key arrays
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # storage.arrays.pack(): .npz of named arrays

    def payload_arrays(self) -> dict[str, np.ndarray]:
        return unpack(self.payload)
