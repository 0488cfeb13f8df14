"""Stored features kept in memory between cache rebuilds, checked against the database on every use.

Why: a cold 10,000-clip rebuild spends most of its time reading 40,000 feature blobs and normalising
the keys. A clip's stored features never change (ingest writes them with the clip row;
`Ingest._encode_stored` only adds those of a backbone profile the clip had none for, and a clip without
any is never kept here), so a warm rebuild reads only the clips it has not seen.

Never trusted blindly: each use first reads every clip's (id, sha256), in the same transaction as
the features it then reads. A new clip is read; a clip held here that is gone or has another
sha256 drops the profile's whole entry, which is then read again (deletions are rare; rows that are
only ever added keep this simple). The one change (id, sha256) cannot show is the same content
stored again, after a delete, under the same id. The database never gives an id again (SQLite's
AUTOINCREMENT since migration 0004, PostgreSQL's sequences), but a database file restored from an older
copy, or ids a SQLite file gave before 0004, can bring a held id back; it comes back only after every
higher id was deleted, the highest held one included: if that one still has the `created` it had when
read, no held clip was replaced. Replicas sharing a PostgreSQL database each
keep their own memo and see each other's changes the same way.

With a folder, each entry is also kept on disk (`memofile`) after a rebuild and read from there when
it is not in memory, so the first rebuild after a start is not a cold one.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from emoweb.services import memofile
from emoweb.services.cachearrays import StoredArrays
from emoweb.services.cacheloo import AffinityMemo
from emoweb.services.store import CaregiverRepository

# (profile, backbone profile) entries kept. 10,000 clips: ~50 MB of EmoAsst's keys, + 20 MB of
# leave-one-out affinities per model rebuilt
MEMO_PROFILES = 4


class ProfileFeatures:
    """One profile's stored features under one backbone profile, as far as read so far."""

    def __init__(self) -> None:
        self.seen: dict[int, str] = {}  # every clip of the profile at the last read (held or not): sha256
        self.top: tuple[int, Any] | None = None  # the highest clip id held and its `created`
        self.arrays = StoredArrays()
        self.loo: dict[str, AffinityMemo] = {}  # model -> its last leave-one-out affinities
        self.saved: tuple | None = None  # what the file on disk holds (`version`), when it was written

    def version(self) -> tuple:
        """Changes whenever rows are added or a leave-one-out memo is replaced."""
        return (id(self.arrays), self.arrays.rows, tuple((m, id(memo.state)) for m, memo in sorted(self.loo.items())))

    def refresh_top(self, repo: CaregiverRepository) -> None:
        """Note the highest held clip id and its `created`, after rows were added or removed."""
        top = max(self.arrays.row_of, default=None)
        self.top = None if top is None else (top, repo.clip_created(top))

    @classmethod
    def load(cls, path: Path) -> ProfileFeatures | None:
        loaded = memofile.load(path)
        if loaded is None:
            return None
        entry = cls()
        entry.seen, entry.top, entry.arrays, entry.loo = loaded
        entry.saved = entry.version()
        return entry


class FeatureMemo:
    """One per service. Hold `lock` around `read` and every read of the entry's arrays (assembling a
    cache): a later `read` appends to them. Its leave-one-out memos need no lock."""

    def __init__(self, size: int = MEMO_PROFILES, folder: Path | None = None) -> None:
        self.lock = threading.RLock()
        self._size = size
        self._entries: OrderedDict[tuple[int, str], ProfileFeatures] = OrderedDict()
        self._writer = memofile.Writer(folder) if folder is not None else None

    def _path(self, key: tuple[int, str]) -> Path | None:
        return memofile.path_for(self._writer.folder, *key) if self._writer is not None else None

    def read(self, repo: CaregiverRepository, profile_id: int, backbone_profile: str, clip_ids: Iterable[int]) -> ProfileFeatures:
        """The profile's entry, holding every clip of `clip_ids` that has features under `backbone_profile`
        (read from the database when new to it); it may hold other clips of the profile too. `repo`: in
        the caller's session after `begin_snapshot`, so the clips checked, the features read and the
        caller's other reads (labels) are one snapshot."""
        with self.lock:
            key = (profile_id, backbone_profile)
            entry = self._entries.pop(key, None)
            if entry is None:
                path = self._path(key)
                entry = (ProfileFeatures.load(path) if path is not None else None) or ProfileFeatures()
            shas = repo.clip_hashes(profile_id)
            if shas != entry.seen:  # a clip was added, deleted or replaced since the last read
                held = entry.arrays.row_of
                if any(shas.get(c) != sha for c, sha in entry.seen.items() if c in held):
                    entry = ProfileFeatures()
                entry.seen = shas
            if entry.top is not None and repo.clip_created(entry.top[0]) != entry.top[1]:
                entry = ProfileFeatures()  # replaced under the same id and sha256: see the module docstring
                entry.seen = shas
            missing = (set(clip_ids) & shas.keys()) - entry.arrays.row_of.keys()
            if missing:
                entry.arrays.add(repo.feature_blobs(profile_id, backbone_profile, missing))
                entry.refresh_top(repo)
            self._entries[key] = entry  # most recently used last
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
            return entry

    def persist(self, profile_id: int, backbone_profile: str) -> None:
        """Queue the entry for the disk when it changed since it was last written (a no-op without a folder)."""
        with self.lock:
            key = (profile_id, backbone_profile)
            entry, path = self._entries.get(key), self._path(key)
            if entry is None or path is None or entry.saved == entry.version():
                return
            entry.saved = entry.version()
            self._writer.submit(path, memofile.freeze(entry.seen, entry.top, entry.arrays, entry.loo))

    def flush(self) -> None:
        """Wait for queued writes (tests and benchmarks; the app never needs to)."""
        if self._writer is not None:
            self._writer.flush()

    def forget_clips(self, repo: CaregiverRepository, profile_id: int, clip_ids: set[int]) -> None:
        """Deleted clips out of the profile's entries, in memory and on disk (the file is deleted now and
        written again without them): the rest stays, so the next rebuild is not a cold one."""
        with self.lock:
            if self._writer is not None:
                self._writer.forget(memofile.profile_pattern(profile_id))
            for key in [k for k in self._entries if k[0] == profile_id]:
                entry = self._entries[key]
                gone = entry.arrays.tokens[[entry.arrays.row_of[c] for c in clip_ids if c in entry.arrays.row_of]]
                entry.arrays = entry.arrays.without(clip_ids)
                entry.seen = {c: sha for c, sha in entry.seen.items() if c not in clip_ids}
                for memo in entry.loo.values():
                    memo.forget(gone)
                if entry.top is not None and entry.top[0] in clip_ids:
                    entry.refresh_top(repo)
                entry.saved = None
                self.persist(*key)

    def drop(self, profile_id: int) -> None:
        """Forget a profile (deleted, or one of its clips deleted) now, in memory and on disk: a deleted
        clip's features must not wait for the next read to notice it is gone."""
        with self.lock:
            for key in [k for k in self._entries if k[0] == profile_id]:
                del self._entries[key]
            if self._writer is not None:
                self._writer.forget(memofile.profile_pattern(profile_id))
