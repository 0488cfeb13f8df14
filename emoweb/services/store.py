"""Reads and writes the caregiver services need that `storage.Repository` does not offer yet.

A subclass, so every query still goes through the repository's transaction plumbing (`_tx`),
works on a session factory or inside a caller's `Session`, and never imports torch. Each method
here is generic data access and can move into `storage/repo.py` unchanged.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Select, String, delete, func, select, type_coerce, update
from sqlalchemy.orm import Session

from storage import NotFound, Repository
from storage.arrays import unpack
from storage.repo import ProfileRef, _effective
from storage.schema import CacheSnapshot, Clip, ClipFeature, Correction, Profile

_CHUNK = 500  # ids per IN (...): well under every backend's bound-parameter limit


def _clip_ids(payload: bytes) -> list[int]:
    """The clip id of each example a snapshot's payload holds (its 'clip_ids'); none in one written before
    snapshots named their clips."""
    return [int(c) for c in unpack(payload).get("clip_ids", np.zeros(0, np.int64)).tolist()]


class CaregiverRepository(Repository):
    """`Repository` plus bulk reads for cache rebuilds, lookups by content hash and snapshot pruning."""

    def find_profile(self, ref: ProfileRef, owner: str | None = None) -> Profile | None:
        """A profile by id or name (of `owner`'s profiles when given), or None. Names are unique
        per owner only: a name several owners use is refused without an owner."""
        with self._tx() as session:
            try:
                return self._profile(session, ref, owner=owner)
            except NotFound:
                return None

    # -- owners (a public demo's visitors) --------------------------------------------------

    def touch_owner(self, owner: str, when: datetime) -> None:
        """Record activity of `owner` on all their profiles."""
        with self._tx(write=True) as session:
            session.execute(update(Profile).where(Profile.owner == owner).values(last_active=when))

    def idle_owners(self, prefix: str, before: datetime) -> list[str]:
        """Owners whose name starts with `prefix` and whose profiles all were last active before `before`."""
        query = (select(Profile.owner).where(Profile.owner.startswith(prefix, autoescape=True))
                 .group_by(Profile.owner).having(func.max(Profile.last_active) < before))
        with self._tx() as session:
            return list(session.scalars(query))

    def owner_media(self, owner: str) -> list[str]:
        """The media paths of every clip in `owner`'s profiles."""
        query = select(Clip.media_path).join(Profile, Profile.id == Clip.profile_id).where(Profile.owner == owner)
        with self._tx() as session:
            return list(session.scalars(query))

    def find_clip(self, profile_id: int, sha256: str) -> Clip | None:
        """The clip of a profile with this content hash, or None."""
        with self._tx() as session:
            return session.scalars(
                select(Clip).where(Clip.profile_id == profile_id, Clip.sha256 == sha256.lower())
            ).one_or_none()

    def clips_by_sha(self, sha256: str) -> list[Clip]:
        """Every clip (any profile) with this content hash, oldest first."""
        with self._tx() as session:
            return list(session.scalars(select(Clip).where(Clip.sha256 == sha256.lower()).order_by(Clip.id)))

    def clips_by_ids(self, clip_ids: Iterable[int]) -> dict[int, Clip]:
        ids = list(clip_ids)
        with self._tx() as session:
            return {c.id: c for c in session.scalars(select(Clip).where(Clip.id.in_(ids)))} if ids else {}

    @staticmethod
    def _by_clip_chunks(query: Select[Any], profile_id: int, backbone_profile: str, clip_ids: Iterable[int]) -> Iterator[Select[Any]]:
        """`query` over clip_features restricted to the profile's clips `clip_ids` under a backbone profile,
        once per chunk of ids (well under every backend's parameter limit)."""
        ids = sorted(set(clip_ids))
        for i in range(0, len(ids), _CHUNK):
            yield query.join(Clip, Clip.id == ClipFeature.clip_id).where(
                Clip.profile_id == profile_id,
                ClipFeature.backbone_profile == backbone_profile,
                ClipFeature.clip_id.in_(ids[i : i + _CHUNK]),
            )

    def feature_names(self, profile_id: int, backbone_profile: str, clip_ids: Iterable[int]) -> list[str]:
        """Distinct feature names stored under a backbone profile for the profile's clips `clip_ids`."""
        names: set[str] = set()
        with self._tx() as session:
            for query in self._by_clip_chunks(select(ClipFeature.name).distinct(), profile_id, backbone_profile, clip_ids):
                names.update(session.scalars(query))
        return sorted(names)

    def clip_hashes(self, profile_id: int) -> dict[int, str]:
        """{clip id: sha256} of a profile's clips, from the (profile_id, sha256) index alone: cheap enough
        to check an in-memory copy of their features against on every rebuild."""
        with self._tx() as session:
            return dict(self._fetch(session, select(Clip.id, Clip.sha256).where(Clip.profile_id == profile_id)))

    def clip_created(self, clip_id: int) -> str | None:
        """A clip's `created` as text, None when gone: only compared, and written into memo files. Text as
        the driver gives it (SQLite: the stored string; PostgreSQL: a datetime, then `str` of it), so
        the same row always gives the same text and no parsing can round it."""
        with self._tx() as session:
            value = session.scalar(select(type_coerce(Clip.created, String)).where(Clip.id == clip_id))
            return None if value is None else str(value)

    def feature_blobs(self, profile_id: int, backbone_profile: str, clip_ids: Iterable[int]) -> list[tuple[Any, ...]]:
        """(name, clip id, dtype, raw bytes) of every feature of the profile's clips `clip_ids` under a
        backbone profile, as the driver returns them: a cold 10,000-clip rebuild reads 40,000, and
        decoding them a name at a time (`cachearrays.StoredArrays.add`) is several times cheaper than
        building one array per row."""
        query = select(ClipFeature.name, ClipFeature.clip_id, ClipFeature.dtype, ClipFeature.data)
        rows: list[tuple[Any, ...]] = []
        with self._tx() as session:
            for chunk in self._by_clip_chunks(query, profile_id, backbone_profile, clip_ids):
                rows += self._fetch(session, chunk)
        return rows

    def begin_snapshot(self) -> None:
        """In a caller's new session, before its first query: every read until the session ends sees one
        snapshot of the database (SQLite: a deferred BEGIN, since pysqlite starts no transaction for
        reads; PostgreSQL: REPEATABLE READ instead of each statement seeing the latest commits)."""
        if not isinstance(self._sessions, Session):
            raise TypeError("begin_snapshot works in a caller's session, not a session factory")
        connection = self._sessions.connection()
        driver = connection.connection.driver_connection
        if isinstance(driver, sqlite3.Connection):
            if not driver.in_transaction:
                connection.exec_driver_sql("BEGIN")
        elif connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")

    def current_corrections(self, profile: ProfileRef) -> dict[int, Correction]:
        """{clip id: its current (latest effective) correction} for a profile's labelled clips."""
        with self._tx() as session:
            profile_id = self._profile(session, profile).id
            latest = (
                select(Correction.id)
                .join(Clip, Clip.id == Correction.clip_id)
                .where(Clip.profile_id == profile_id, _effective())
            )
            rows = session.scalars(select(Correction).where(Correction.id.in_(latest)).order_by(Correction.id))
            current: dict[int, Correction] = {}
            for row in rows:  # ascending id: the last one per clip wins
                current[row.clip_id] = row
            return current

    def active_snapshot_ids(self, profile_id: int) -> dict[str, int]:
        """{model: id of its active snapshot}: a cheap check whether an in-memory cache is stale."""
        with self._tx() as session:
            rows = session.execute(
                select(CacheSnapshot.model, CacheSnapshot.id).where(
                    CacheSnapshot.profile_id == profile_id, CacheSnapshot.active
                )
            )
            return {model: snapshot_id for model, snapshot_id in rows}

    def active_snapshots_held(self, profile_id: int) -> dict[str, tuple[dict[str, Any], dict[int, str]]]:
        """{model: (hyper-parameters of its active snapshot, {clip id: label} of the examples it holds)}, in one
        read (payload 'clip_ids' and the row's `labels`, aligned); a snapshot that names no clips (written before
        snapshots did) holds {}."""
        with self._tx() as session:
            rows = session.execute(
                select(CacheSnapshot.model, CacheSnapshot.hyper, CacheSnapshot.payload, CacheSnapshot.labels).where(
                    CacheSnapshot.profile_id == profile_id, CacheSnapshot.active
                )
            )
            return {model: (hyper, dict(zip(_clip_ids(payload), labels))) for model, hyper, payload, labels in rows}

    def get_snapshot(self, snapshot_id: int) -> CacheSnapshot | None:
        with self._tx() as session:
            return session.get(CacheSnapshot, snapshot_id)

    def snapshots_with_clip(self, profile_id: int, clip_id: int) -> list[int]:
        """Ids of a profile's snapshots whose payload holds the clip's keys (payload 'clip_ids')."""
        with self._tx() as session:
            rows = session.execute(
                select(CacheSnapshot.id, CacheSnapshot.payload).where(CacheSnapshot.profile_id == profile_id)
            )
            return [sid for sid, payload in rows if clip_id in _clip_ids(payload)]

    def delete_snapshots(self, snapshot_ids: Iterable[int]) -> int:
        """Delete inactive snapshots by id (an active one is never deleted here); returns how many."""
        ids = list(snapshot_ids)
        if not ids:
            return 0
        with self._tx(write=True) as session:
            result = session.execute(
                delete(CacheSnapshot).where(CacheSnapshot.id.in_(ids), CacheSnapshot.active.is_(False))
            )
            return result.rowcount or 0

    def prune_snapshots(self, profile_id: int, model: str, keep: int) -> int:
        """Keep the active snapshot and the `keep` newest inactive ones of a (profile, model)."""
        with self._tx(write=True) as session:
            old = list(
                session.scalars(
                    select(CacheSnapshot.id)
                    .where(
                        CacheSnapshot.profile_id == profile_id,
                        CacheSnapshot.model == model,
                        CacheSnapshot.active.is_(False),
                    )
                    .order_by(CacheSnapshot.id.desc())
                    .offset(keep)
                )
            )
            if old:
                session.execute(delete(CacheSnapshot).where(CacheSnapshot.id.in_(old)))
            return len(old)
