"""Data access: the application reads and writes the database only through `Repository`.

Each method is one transaction. Given a session factory, the method opens a session and
commits; given a `Session`, it works inside the caller's transaction (flushes, never commits).
Returned ORM objects are detached and fully loaded; they carry no relationships.
Supported backends: SQLite and PostgreSQL (upserts use their shared ON CONFLICT syntax).
"""
from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Select, and_, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer, sessionmaker

from . import checks
from .arrays import pack, to_blob
from .errors import Invalid, NotFound
from .labelqueue import QueueItem, sort_key
from .schema import CacheSnapshot, Clip, ClipFeature, ClipSenses, Correction, Prediction, Profile

ProfileRef = int | str  # a profile's id or its name


def _effective() -> Any:
    """Corrections that count: not an undo row, and not withdrawn by one."""
    undone = select(Correction.undoes_id).where(Correction.undoes_id.is_not(None))
    return and_(Correction.undoes_id.is_(None), Correction.id.not_in(undone))


class Repository:
    """All reads and writes of profiles, clips, features, predictions, corrections and caches."""

    def __init__(self, sessions: Session | sessionmaker[Session]) -> None:
        self._sessions = sessions

    # -- plumbing -------------------------------------------------------------------------

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[Session]:
        """One transaction: the caller's session, or a new one committed on success."""
        if isinstance(self._sessions, Session):
            if write:
                self._begin_write(self._sessions)
            yield self._sessions
            self._sessions.flush()
            return
        with self._sessions(expire_on_commit=False) as session, session.begin():
            if write:
                self._begin_write(session)
            yield session

    @staticmethod
    def _begin_write(session: Session) -> None:
        """On SQLite, take the write lock first (BEGIN IMMEDIATE): read-then-write steps see
        no concurrent change, and a busy writer waits busy_timeout instead of failing."""
        connection = session.connection()
        driver = connection.connection.driver_connection
        if isinstance(driver, sqlite3.Connection) and not driver.in_transaction:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    @staticmethod
    def _fetch(session: Session, query: Select[Any]) -> list[tuple[Any, ...]]:
        """Every row of a Core `query` straight from the driver's cursor, in the session's transaction:
        no SQLAlchemy rows and no result processing (blobs stay bytes or memoryview). For reads of
        10,000+ rows on a cache rebuild's path, where building rows costs as much as the query."""
        result = session.connection().execute(query)
        try:
            return result.cursor.fetchall()
        finally:
            result.close()

    @staticmethod
    def _insert(session: Session, entity: type) -> Any:
        """An INSERT supporting ON CONFLICT for the session's backend."""
        dialect = session.get_bind().dialect.name
        if dialect == "sqlite":
            return sqlite.insert(entity)
        if dialect == "postgresql":
            return postgresql.insert(entity)
        raise Invalid(f"unsupported database backend: {dialect}")

    @staticmethod
    def _profile(session: Session, ref: ProfileRef, lock: bool = False, owner: str | None = None) -> Profile:
        """A profile by id or name; with `owner`, only among that owner's profiles."""
        query = select(Profile).where(Profile.id == ref if isinstance(ref, int) else Profile.name == ref)
        if owner is not None:
            query = query.where(Profile.owner == owner)
        if lock:  # PostgreSQL row lock; on SQLite the write transaction already excludes others
            query = query.with_for_update().execution_options(populate_existing=True)
        found = list(session.scalars(query.limit(2)))
        if len(found) > 1:  # names are unique per owner only
            raise Invalid(f"several profiles are named {ref!r}: name the profile by its id")
        if not found:
            raise NotFound(f"no profile {ref!r}")
        return found[0]

    @staticmethod
    def _clip(session: Session, clip_id: int) -> Clip:
        clip = session.get(Clip, clip_id)
        if clip is None:
            raise NotFound(f"no clip {clip_id}")
        return clip

    # -- profiles -------------------------------------------------------------------------

    def create_profile(self, name: str, label_set: Sequence[str] = (), owner: str | None = None) -> Profile:
        profile = Profile(name=checks.name(name, "profile name"), owner=owner, label_set=checks.label_set(label_set))
        try:
            with self._tx(write=True) as session:
                session.add(profile)
        except IntegrityError:
            raise Invalid(f"profile {profile.name!r} already exists") from None
        return profile

    def list_profiles(self, owner: str | None = None) -> list[Profile]:
        """All profiles by name, or only those of one owner."""
        query = select(Profile).order_by(Profile.name)
        if owner is not None:
            query = query.where(Profile.owner == owner)
        with self._tx() as session:
            return list(session.scalars(query))

    def get_profile(self, ref: ProfileRef) -> Profile:
        with self._tx() as session:
            return self._profile(session, ref)

    def delete_profile(self, ref: ProfileRef) -> list[str]:
        """Delete a profile and, by cascade, all its rows; returns its clips' media paths for the
        caller to remove from the data dir."""
        with self._tx(write=True) as session:
            profile = self._profile(session, ref)
            paths = list(session.scalars(select(Clip.media_path).where(Clip.profile_id == profile.id)))
            session.execute(delete(Profile).where(Profile.id == profile.id))
        return paths

    # -- clips ----------------------------------------------------------------------------

    def add_clip(
        self,
        profile: ProfileRef,
        sha256: str,
        media_path: str,
        kind: str,
        source: str = "upload",
        original_name: str = "",
        duration: float | None = None,
        notes: Sequence[str] = (),
    ) -> tuple[Clip, bool]:
        """Store a clip; returns (clip, True) when new, or (the existing clip, False) when the same
        content (sha256) is already in the profile: a re-upload, whose media_path and notes are ignored.
        `notes`: what decoding noticed, one sentence each."""
        values = dict(
            sha256=checks.sha256(sha256),
            media_path=checks.media_path(media_path),
            kind=checks.kind(kind),
            source=checks.source(source),
            original_name=original_name or "",
            duration=duration,
            notes=[checks.name(n, "clip note") for n in notes],
        )
        with self._tx(write=True) as session:
            profile_id = self._profile(session, profile).id
            inserted = session.scalar(
                self._insert(session, Clip)
                .values(profile_id=profile_id, **values)
                .on_conflict_do_nothing(index_elements=["profile_id", "sha256"])
                .returning(Clip.id)
            )
            clip = session.scalars(
                select(Clip).where(Clip.profile_id == profile_id, Clip.sha256 == values["sha256"])
            ).one()
        return clip, inserted is not None

    def get_clip(self, clip_id: int) -> Clip:
        with self._tx() as session:
            return self._clip(session, clip_id)

    def list_clips(self, profile: ProfileRef) -> list[Clip]:
        """A profile's clips, oldest first."""
        with self._tx() as session:
            profile_id = self._profile(session, profile).id
            return list(session.scalars(select(Clip).where(Clip.profile_id == profile_id).order_by(Clip.id)))

    def delete_clip(self, clip_id: int) -> Clip:
        """Delete a clip and its features, per-sense decisions, predictions and corrections; returns the deleted row
        (its media_path is the caller's to remove)."""
        with self._tx(write=True) as session:
            clip = self._clip(session, clip_id)
            session.execute(delete(Clip).where(Clip.id == clip_id))
        return clip

    def named_media_paths(self, paths: Iterable[str], lock: bool = False) -> set[str]:
        """Which of `paths` a clip row names as its media file. `lock`: take the write lock first (inside a
        caller's session it is held until that transaction ends), so no writer is mid-transaction while
        the caller acts on the answer."""
        wanted, named = list(paths), set()
        with self._tx(write=lock) as session:
            for i in range(0, len(wanted), 500):  # well under every backend's bound-parameter limit
                named.update(session.scalars(select(Clip.media_path).where(Clip.media_path.in_(wanted[i : i + 500]))))
        return named

    # -- features -------------------------------------------------------------------------

    def put_features(self, clip_id: int, backbone_profile: str, features: Mapping[str, np.ndarray]) -> None:
        """Store (or replace) named encoder outputs of a clip under a backbone profile."""
        backbone_profile = checks.name(backbone_profile, "backbone profile")
        rows = []
        for name, array in features.items():
            data, dtype, shape = to_blob(array)
            rows.append(dict(name=checks.name(name, "feature name"), data=data, dtype=dtype, shape=shape))
        with self._tx(write=True) as session:
            self._clip(session, clip_id)
            for row in rows:
                insert = self._insert(session, ClipFeature).values(
                    clip_id=clip_id, backbone_profile=backbone_profile, **row
                )
                session.execute(
                    insert.on_conflict_do_update(
                        index_elements=["clip_id", "backbone_profile", "name"],
                        set_=dict(data=insert.excluded.data, dtype=insert.excluded.dtype, shape=insert.excluded.shape),
                    )
                )

    def get_features(self, clip_id: int, backbone_profile: str) -> dict[str, np.ndarray]:
        """All stored features of a clip under a backbone profile ({} when none yet)."""
        with self._tx() as session:
            self._clip(session, clip_id)
            rows = session.scalars(
                select(ClipFeature).where(
                    ClipFeature.clip_id == clip_id, ClipFeature.backbone_profile == backbone_profile
                )
            )
            return {row.name: row.array() for row in rows}

    def profile_features(self, profile: ProfileRef, backbone_profile: str, name: str) -> dict[int, np.ndarray]:
        """One named feature of every clip of a profile that has it: {clip id: array}, for a
        cache rebuild without re-encoding media."""
        with self._tx() as session:
            profile_id = self._profile(session, profile).id
            rows = session.scalars(
                select(ClipFeature)
                .join(Clip, Clip.id == ClipFeature.clip_id)
                .where(
                    Clip.profile_id == profile_id,
                    ClipFeature.backbone_profile == backbone_profile,
                    ClipFeature.name == name,
                )
                .order_by(ClipFeature.clip_id)
            )
            return {row.clip_id: row.array() for row in rows}

    # -- per-sense decisions --------------------------------------------------------------

    def put_senses(self, clip_id: int, backbone_profile: str, senses: Mapping[str, Mapping[str, Mapping[str, float]]]) -> None:
        """Store (or replace) each model's own decision per sense on a clip under a backbone profile:
        {model: {sense: {label: probability}}}."""
        backbone_profile = checks.name(backbone_profile, "backbone profile")
        rows = {checks.name(model, "model name"): {checks.name(sense, "sense"): checks.probs(p) for sense, p in by_sense.items()}
                for model, by_sense in senses.items()}
        with self._tx(write=True) as session:
            self._clip(session, clip_id)
            for model, by_sense in rows.items():
                insert = self._insert(session, ClipSenses).values(
                    clip_id=clip_id, backbone_profile=backbone_profile, model=model, senses=by_sense
                )
                session.execute(
                    insert.on_conflict_do_update(
                        index_elements=["clip_id", "backbone_profile", "model"], set_=dict(senses=insert.excluded.senses)
                    )
                )

    def get_senses(self, clip_id: int, backbone_profile: str) -> dict[str, dict[str, dict[str, float]]]:
        """{model: {sense: {label: probability}}} stored for a clip under a backbone profile ({} when none:
        also a clip stored before these were kept)."""
        with self._tx() as session:
            self._clip(session, clip_id)
            rows = session.scalars(
                select(ClipSenses).where(ClipSenses.clip_id == clip_id, ClipSenses.backbone_profile == backbone_profile)
            )
            return {row.model: row.senses for row in rows}

    def senses_of_profile(self, profile: ProfileRef, backbone_profile: str) -> dict[int, dict[str, dict[str, dict[str, float]]]]:
        """{clip id: {model: {sense: {label: probability}}}} of every clip of a profile that has them, in one read."""
        with self._tx() as session:
            profile_id = self._profile(session, profile).id
            rows = session.execute(
                select(ClipSenses.clip_id, ClipSenses.model, ClipSenses.senses)
                .join(Clip, Clip.id == ClipSenses.clip_id)
                .where(Clip.profile_id == profile_id, ClipSenses.backbone_profile == backbone_profile)
            )
            found: dict[int, dict[str, dict[str, dict[str, float]]]] = {}
            for clip_id, model, senses in rows:
                found.setdefault(clip_id, {})[model] = senses
            return found

    # -- predictions ----------------------------------------------------------------------

    def add_prediction(
        self, clip_id: int, model: str, probs: Mapping[str, float], model_version: str = ""
    ) -> Prediction:
        """Record a model's probabilities; the label (argmax) and margin (top1 - top2) are derived."""
        probs = checks.probs(probs)
        ranked = sorted(probs.items(), key=lambda item: item[1], reverse=True)
        margin = ranked[0][1] - (ranked[1][1] if len(ranked) > 1 else 0.0)
        prediction = Prediction(
            clip_id=clip_id,
            model=checks.name(model, "model name"),
            model_version=model_version or "",
            label=ranked[0][0],
            probs=probs,
            margin=margin,
        )
        with self._tx(write=True) as session:
            self._clip(session, clip_id)
            session.add(prediction)
        return prediction

    @staticmethod
    def _latest_predictions(clip_filter: Any) -> Select[Prediction]:
        """The latest prediction per (clip, model) among the clips matching `clip_filter`."""
        latest = (
            select(func.max(Prediction.id))
            .join(Clip, Clip.id == Prediction.clip_id)
            .where(clip_filter)
            .group_by(Prediction.clip_id, Prediction.model)
        )
        return select(Prediction).where(Prediction.id.in_(latest))

    def latest_predictions(self, clip_id: int) -> dict[str, Prediction]:
        """{model: its latest prediction on the clip}."""
        with self._tx() as session:
            self._clip(session, clip_id)
            rows = session.scalars(self._latest_predictions(Clip.id == clip_id).order_by(Prediction.model))
            return {row.model: row for row in rows}

    # -- corrections ----------------------------------------------------------------------

    def add_correction(
        self, clip_id: int, label: str, annotator: str = "", note: str = "", allow_new_label: bool = False
    ) -> Correction:
        """Label a clip. The label must be in its profile's label set, unless `allow_new_label`,
        which appends it to the set in the same transaction."""
        label = checks.name(label, "label")
        with self._tx(write=True) as session:
            clip = self._clip(session, clip_id)
            profile = self._profile(session, clip.profile_id, lock=allow_new_label)
            if label not in profile.label_set:
                if not allow_new_label:
                    allowed = ", ".join(profile.label_set) or "none yet"
                    raise Invalid(f"label {label!r} is not in the label set of {profile.name!r} ({allowed})")
                profile.label_set = [*profile.label_set, label]
            correction = Correction(clip_id=clip_id, label=label, annotator=annotator or "", note=note or "")
            session.add(correction)
        return correction

    def undo_last_correction(self, clip_id: int, annotator: str = "") -> Correction:
        """Withdraw the clip's current correction by appending an undo row (returned); the label
        before it becomes current again. Raises `Invalid` when there is nothing to undo."""
        with self._tx(write=True) as session:
            self._clip(session, clip_id)
            last = session.scalars(
                select(Correction).where(Correction.clip_id == clip_id, _effective()).order_by(Correction.id.desc())
            ).first()
            if last is None:
                raise Invalid(f"clip {clip_id} has no correction to undo")
            undo_id = session.scalar(
                self._insert(session, Correction)
                .values(clip_id=clip_id, label=last.label, annotator=annotator or "", note="", undoes_id=last.id)
                .on_conflict_do_nothing(index_elements=["undoes_id"])
                .returning(Correction.id)
            )
            if undo_id is None:
                raise Invalid(f"correction {last.id} of clip {clip_id} was just undone by someone else")
            return session.get_one(Correction, undo_id)

    def corrections(self, clip_id: int) -> list[Correction]:
        """The clip's whole label history, undo rows included, oldest first."""
        with self._tx() as session:
            self._clip(session, clip_id)
            query = select(Correction).where(Correction.clip_id == clip_id).order_by(Correction.id)
            return list(session.scalars(query))

    def label_changes_since(self, profile: ProfileRef, since: datetime | None) -> int:
        """How many label changes (labels given and undone) the profile's clips had after `since` (None: ever):
        what its cache, built at `since`, does not know yet."""
        with self._tx() as session:
            query = (select(func.count(Correction.id)).join(Clip, Clip.id == Correction.clip_id)
                     .where(Clip.profile_id == self._profile(session, profile).id))
            if since is not None:
                query = query.where(Correction.created > since)
            return int(session.scalar(query) or 0)

    def current_label(self, clip_id: int) -> str | None:
        """The label of the clip's latest correction that is not undone; None if unlabelled."""
        with self._tx() as session:
            self._clip(session, clip_id)
            return session.scalars(
                select(Correction.label)
                .where(Correction.clip_id == clip_id, _effective())
                .order_by(Correction.id.desc())
                .limit(1)
            ).first()

    @staticmethod
    def _current_labels(session: Session, profile_id: int) -> dict[int, str]:
        latest = (
            select(func.max(Correction.id))
            .join(Clip, Clip.id == Correction.clip_id)
            .where(Clip.profile_id == profile_id, _effective())
            .group_by(Correction.clip_id)
        )
        return dict(Repository._fetch(session, select(Correction.clip_id, Correction.label).where(Correction.id.in_(latest))))

    def current_labels(self, profile: ProfileRef) -> dict[int, str]:
        """{clip id: current label} for the labelled clips of a profile."""
        with self._tx() as session:
            return self._current_labels(session, self._profile(session, profile).id)

    def labelling_queue(self, profile: ProfileRef, limit: int | None = None, senses_differ: Collection[int] = ()) -> list[QueueItem]:
        """All clips of a profile in the order a caregiver should review them
        (see `storage.labelqueue.sort_key` for the exact order). `senses_differ`: ids of the clips whose face
        and voice point to different labels (a rule of the caller's, on `senses_of_profile`)."""
        with self._tx() as session:
            profile_id = self._profile(session, profile).id
            clips = session.scalars(select(Clip).where(Clip.profile_id == profile_id))
            labels = self._current_labels(session, profile_id)
            top: dict[int, dict[str, str]] = {}
            margins: dict[int, float] = {}
            for p in session.scalars(self._latest_predictions(Clip.profile_id == profile_id)):
                top.setdefault(p.clip_id, {})[p.model] = p.label
                margins[p.clip_id] = min(p.margin, margins.get(p.clip_id, p.margin))
            items = [QueueItem(c, labels.get(c.id), top.get(c.id, {}), margins.get(c.id), c.id in senses_differ) for c in clips]
        return sorted(items, key=sort_key)[:limit]

    # -- cache snapshots ------------------------------------------------------------------

    def save_snapshot(
        self,
        profile: ProfileRef,
        model: str,
        arrays: Mapping[str, np.ndarray],
        labels: Sequence[str],
        hyper: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        activate: bool = True,
    ) -> CacheSnapshot:
        """Store a built cache: named arrays (keys per modality, ...) whose rows align with
        `labels`. With `activate`, it replaces the active snapshot in the same transaction."""
        labels = [checks.name(label, "label") for label in labels]
        snapshot = CacheSnapshot(
            model=checks.name(model, "model name"),
            n_per_label=dict(Counter(labels)),
            hyper=dict(hyper or {}),
            metrics=dict(metrics or {}),
            labels=labels,
            active=False,
            payload=pack(arrays),
        )
        with self._tx(write=True) as session:
            snapshot.profile_id = self._profile(session, profile, lock=activate).id
            session.add(snapshot)
            session.flush()
            if activate:
                self._activate(session, snapshot)
        return snapshot

    def activate_snapshot(self, snapshot_id: int) -> CacheSnapshot:
        """Make an older snapshot the active one again (e.g. to roll back a rebuild)."""
        with self._tx(write=True) as session:
            snapshot = session.get(CacheSnapshot, snapshot_id)
            if snapshot is None:
                raise NotFound(f"no cache snapshot {snapshot_id}")
            self._profile(session, snapshot.profile_id, lock=True)
            self._activate(session, snapshot)
        return snapshot

    @staticmethod
    def _activate(session: Session, snapshot: CacheSnapshot) -> None:
        """Deactivate the others first: the partial unique index allows one active per model."""
        session.execute(
            update(CacheSnapshot)
            .where(
                CacheSnapshot.profile_id == snapshot.profile_id,
                CacheSnapshot.model == snapshot.model,
                CacheSnapshot.active,
                CacheSnapshot.id != snapshot.id,
            )
            .values(active=False)
        )
        snapshot.active = True
        session.flush()

    def active_snapshot(self, profile: ProfileRef, model: str) -> CacheSnapshot | None:
        with self._tx() as session:
            profile_id = self._profile(session, profile).id
            return session.scalars(
                select(CacheSnapshot).where(
                    CacheSnapshot.profile_id == profile_id, CacheSnapshot.model == model, CacheSnapshot.active
                )
            ).one_or_none()

    def list_snapshots(self, profile: ProfileRef, model: str | None = None) -> list[CacheSnapshot]:
        """A profile's snapshots, newest first, without their payloads (reading one raises)."""
        query = select(CacheSnapshot).options(defer(CacheSnapshot.payload, raiseload=True))
        if model is not None:
            query = query.where(CacheSnapshot.model == model)
        with self._tx() as session:
            query = query.where(CacheSnapshot.profile_id == self._profile(session, profile).id)
            return list(session.scalars(query.order_by(CacheSnapshot.id.desc())))
