"""Reads and writes the caregiver services need that `storage.Repository` does not offer yet.

A subclass, so every query still goes through the repository's transaction plumbing (`_tx`),
works on a session factory or inside a caller's `Session`, and never imports torch. Each method
here is generic data access and can move into `storage/repo.py` unchanged.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from sqlalchemy import delete, select

from storage import Repository
from storage.arrays import unpack
from storage.repo import ProfileRef, _effective
from storage.schema import CacheSnapshot, Clip, ClipFeature, Correction, Profile


class CaregiverRepository(Repository):
    """`Repository` plus bulk reads for cache rebuilds, lookups by content hash and snapshot pruning."""

    def find_profile(self, ref: ProfileRef) -> Profile | None:
        """A profile by id or name, or None."""
        with self._tx() as session:
            query = select(Profile).where(Profile.id == ref if isinstance(ref, int) else Profile.name == ref)
            return session.scalars(query).one_or_none()

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

    def feature_names(self, profile_id: int, backbone_profile: str) -> list[str]:
        """Distinct feature names stored for a profile's clips under a backbone profile."""
        with self._tx() as session:
            query = (
                select(ClipFeature.name)
                .join(Clip, Clip.id == ClipFeature.clip_id)
                .where(Clip.profile_id == profile_id, ClipFeature.backbone_profile == backbone_profile)
                .distinct()
            )
            return sorted(session.scalars(query))

    def bulk_features(
        self, profile_id: int, backbone_profile: str, names: Sequence[str]
    ) -> dict[str, dict[int, np.ndarray]]:
        """{feature name: {clip id: flat read-only array}} for several names in one query, without
        building ORM objects or copying blobs (a 10,000-clip cache rebuild reads 40,000 of them)."""
        out: dict[str, dict[int, np.ndarray]] = {name: {} for name in names}
        if not names:
            return out
        with self._tx() as session:
            rows = session.execute(
                select(ClipFeature.name, ClipFeature.clip_id, ClipFeature.dtype, ClipFeature.data)
                .join(Clip, Clip.id == ClipFeature.clip_id)
                .where(
                    Clip.profile_id == profile_id,
                    ClipFeature.backbone_profile == backbone_profile,
                    ClipFeature.name.in_(list(names)),
                )
            )
            for name, clip_id, dtype, data in rows:
                out[name][clip_id] = np.frombuffer(data, dtype=np.dtype(dtype))
        return out

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

    def get_snapshot(self, snapshot_id: int) -> CacheSnapshot | None:
        with self._tx() as session:
            return session.get(CacheSnapshot, snapshot_id)

    def snapshots_with_clip(self, profile_id: int, clip_id: int) -> list[int]:
        """Ids of a profile's snapshots whose payload holds the clip's keys (payload 'clip_ids')."""
        with self._tx() as session:
            rows = session.execute(
                select(CacheSnapshot.id, CacheSnapshot.payload).where(CacheSnapshot.profile_id == profile_id)
            )
            return [sid for sid, payload in rows if clip_id in set(unpack(payload).get("clip_ids", np.zeros(0)).tolist())]

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
