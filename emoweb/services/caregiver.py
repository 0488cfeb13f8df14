"""The caregiver loop as plain Python: profiles, ingest, predict, corrections, cache rebuilds, label files.

What the CLI, the Gradio UI and the tests call; no gradio here. Storage errors come out as
`emoweb.errors` with one-line messages.

Invariants:
- Media files live at `<data_dir>/media/<profile id>/<sha256><suffix>`: generated, never a
  user-supplied path. A file is written to a temp name in that folder and renamed into place
  inside the database transaction that records it; any failure leaves no row and no file, and
  what a killed process leaves (a temp file, a file whose rows never committed) goes at the next start.
- Every clip is decoded and encoded once: ingest stores, per backbone profile and model, the
  cache keys (`<model>.fused`, `<model>.audio`, `<model>.visual`) and the base logits
  (`<model>.logits`, over the profile's label set). Re-uploads, predictions on stored clips and
  cache rebuilds all work from those arrays.
- A cache rebuild writes every model's snapshot in one transaction: a crash or kill before the
  commit leaves the previous snapshots active. Predictions use a profile's active snapshots; an
  in-process copy is reloaded whenever the active snapshot id changes (in any process).
- A snapshot refers to its clips' stored features (ids, labels, alpha/beta, backbone profile) rather
  than copying them; features read for a rebuild or a snapshot stay in memory (`featmemo`), checked
  against the database on every use, and so do the last leave-one-out affinities. After a rebuild
  both are also written to a file in the data dir (`memofile`), so the first rebuild after a restart
  is as fast; deleting a clip or profile deletes that file.
"""
from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from emoweb.config import Settings, get_settings
from emoweb.errors import EmoWebError, MediaError, NotFoundError
from emoweb.media import display_name, file_sha256  # display_name: uploaded names may hold newlines
from emoweb.safetext import clean, decode
from emoweb.services import cachebuild, labelfiles, lessons, tempfiles, uploads
from emoweb.services.records import (
    ClipInfo,
    ClipResult,
    CorrectionInfo,
    ImportReport,
    ModelPrediction,
    ModelRebuild,
    ProfileInfo,
    QueueEntry,
)
from emoweb.services.featmemo import FeatureMemo
from emoweb.services.store import CaregiverRepository
from models import LABEL7
from models.cache import FewShotCache, logits_from_probs
from storage import Invalid, NotFound, StorageError, open_database
from storage.schema import CacheSnapshot, Clip, Profile

KEEP_SNAPSHOTS = 2  # inactive snapshots kept per (profile, model), to roll a rebuild back
REBUILD_PAUSE_ENV = "EMOWEB_TEST_REBUILD_PAUSE"  # tests only: seconds to sleep just before a rebuild commits
INGEST_PAUSE_ENV = "EMOWEB_TEST_INGEST_PAUSE"  # tests only: "<stage>=<seconds>", stage 'written' or 'commit' (_ingest_new)
_SUFFIX = re.compile(r"\.[a-z0-9]{1,10}")
_CLIP_ID = re.compile(r"[0-9]{1,18}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# An upload's temp file: `.ingest-<pid>-<token>-<random>.part`; the token tells this process from an
# earlier one that had the same pid (a restarted container), so a killed upload's file can be removed.
_NO_SPACE = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file size limit reached"}
_PG_DISK_FULL = "53100"  # PostgreSQL's SQLSTATE disk_full

F = TypeVar("F", bound=Callable[..., Any])
Progress = Callable[[str], None]  # as emoweb.features.Progress: called with a stage or model name


def _storage_errors(fn: F) -> F:
    """Storage's NotFound/Invalid become the application's one-line errors."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NotFound as exc:
            raise NotFoundError(str(exc)) from None
        except Invalid as exc:
            raise EmoWebError(str(exc)) from None
        except StorageError as exc:
            raise EmoWebError(str(exc)) from None
        except DBAPIError as exc:  # a full disk under the database: one line, not the driver's traceback
            orig = exc.orig
            full = getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or getattr(orig, "pgcode", None) == _PG_DISK_FULL
            if not full or not args or not isinstance(args[0], CaregiverService):
                raise
            raise EmoWebError(args[0].no_space_message("disk full", database=True)) from None

    return wrapper  # type: ignore[return-value]


def _test_pause(env: str, stage: str, message: str) -> None:
    """Tests only: when `env` is "<seconds>" or "<stage>=<seconds>", announce `message` on stderr and
    sleep there, so a test can kill the process at a known point."""
    wanted, _, seconds = os.environ.get(env, "").rpartition("=")
    if seconds and wanted in ("", stage):
        print(message, file=sys.stderr, flush=True)
        time.sleep(float(seconds))


def profile_info(p: Profile) -> ProfileInfo:
    return ProfileInfo(p.id, p.name, p.owner, list(p.label_set), p.created)


def clip_info(c: Clip) -> ClipInfo:
    return ClipInfo(c.id, c.profile_id, c.sha256, c.original_name, c.media_path, c.kind, c.source, c.duration, c.created)


def safe_suffix(name: str) -> str:
    """The file's extension when it is a plain one ('.mp4'), else none: the stored name is ours."""
    suffix = Path(name).suffix.lower()
    return suffix if _SUFFIX.fullmatch(suffix) else ""


def _align(base: torch.Tensor, labels: Sequence[str], label_set: Sequence[str]) -> np.ndarray:
    """A model's base logits [C] re-ordered to the profile's label set; a label the model has no
    column for gets the row mean (it can win only through the cache)."""
    values = base.detach().float().cpu().reshape(-1)
    index = {label: i for i, label in enumerate(labels)}
    mean = float(values.mean()) if values.numel() else 0.0
    return np.asarray([float(values[index[label]]) if label in index else mean for label in label_set], np.float32)


def _answers(predictions: dict[str, ModelPrediction]) -> list[tuple[str, ModelPrediction]]:
    """The predictions worth storing: a clip with nothing to recognise gets none, so its queue row
    shows no answers rather than a uniform guess."""
    return [(model, p) for model, p in predictions.items() if p.decided]


def _margin(probs: Sequence[float]) -> float:
    top = sorted(probs, reverse=True)
    return float(top[0] - (top[1] if len(top) > 1 else 0.0))


class _AlreadyStored(Exception):
    """Raised inside an ingest transaction when a concurrent upload stored the same content first."""

    def __init__(self, clip: Clip):
        self.clip = clip


class CaregiverService:
    """One per process (or per test): the database, the data dir, and optionally a shared Predictor."""

    def __init__(self, settings: Settings | None = None, predictor: Any = None, models: str = "all"):
        self.settings = settings or get_settings()
        self._sessions = open_database(self.settings.db_url)
        self.repo = CaregiverRepository(self._sessions)
        self.data_dir = Path(self.settings.data_dir).expanduser().resolve()
        self.media_root = self.data_dir / "media"
        self.backbone = self.settings.profile
        self._predictor = predictor
        self._models = models
        self._caches: dict[tuple[int, str], tuple[int, FewShotCache, list[int]]] = {}
        self._lock = threading.RLock()
        # its lock is taken after self._lock, never before it; kept on disk too (`memofile`)
        self._features = FeatureMemo(folder=self.data_dir / "memo")
        self._remove_interrupted_uploads()

    def _remove_interrupted_uploads(self) -> None:
        """Remove what an ingest killed mid-way (SIGKILL, power loss) left in the media folder: temp files
        of processes that are gone, and media files renamed into place whose transaction never committed
        (no clip row names them). Telling the latter from an ingest between its rename and its commit
        needs SQLite's write lock (held across both), so they are left alone on other databases."""
        if not self.media_root.is_dir():
            return
        for part in self.media_root.glob("*/.ingest-*.part"):
            if tempfiles.stale(part, "ingest"):
                part.unlink(missing_ok=True)
        files = {p.relative_to(self.data_dir).as_posix(): p for p in self.media_root.glob("*/*")
                 if not p.name.startswith(".") and p.is_file()}
        if not files or make_url(self.settings.db_url).get_backend_name() != "sqlite":
            return
        unnamed = set(files) - self.repo.named_media_paths(files)
        if unnamed:
            with self._sessions() as session, session.begin():
                for relative in unnamed - CaregiverRepository(session).named_media_paths(unnamed, lock=True):
                    files[relative].unlink(missing_ok=True)  # under the write lock: no ingest is mid-commit

    def no_space_message(self, reason: str, database: bool = False) -> str:
        """The one line for a write refused for lack of space, saying where."""
        url = make_url(self.settings.db_url)
        if database and url.get_backend_name() != "sqlite":
            return f"not enough disk space on the database server ({reason}): free some space there and try again"
        folder = Path(url.database).parent if database and url.database else self.data_dir
        return f"not enough disk space in the data folder {folder} ({reason}): free some space and try again"

    def close(self) -> None:
        """Finish writing feature memos and release the database connections."""
        self._features.flush()
        bind = self._sessions.kw.get("bind")
        if bind is not None:
            bind.dispose()

    @property
    def predictor(self):
        """The shared Predictor (backbones + models), created on first need: only new media needs it."""
        with self._lock:
            if self._predictor is None:
                from emoweb.inference import Predictor

                self._predictor = Predictor(self.settings)
            return self._predictor

    # -- lookups ----------------------------------------------------------------------------

    def _profile(self, ref: int | str | ProfileInfo, owner: str | None = None) -> Profile:
        """A profile by id, name, or a name that is an id ('3'); with `owner`, only among theirs."""
        if isinstance(ref, ProfileInfo):
            ref = ref.id
        if isinstance(ref, str):
            ref = clean(ref).strip()
        found = self.repo.find_profile(ref, owner)
        if found is None and isinstance(ref, str) and _CLIP_ID.fullmatch(ref):
            found = self.repo.find_profile(int(ref), owner)
        if found is None:
            raise NotFoundError(f"no profile {ref!r}")
        return found

    @staticmethod
    def clip_id(value: int | str) -> int:
        """A clip id from user input: digits only (so '../x' never names anything)."""
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        text = str(value).strip()
        if not _CLIP_ID.fullmatch(text):
            raise NotFoundError(f"no clip {str(value)[:80]!r}: clip ids are whole numbers")
        return int(text)

    def _clip(self, clip_id: int | str, profile: int | str | ProfileInfo | None = None) -> tuple[Clip, Profile]:
        wanted = self._profile(profile) if profile is not None else None  # an unknown profile is reported first
        clip_id = self.clip_id(clip_id)
        try:
            clip = self.repo.get_clip(clip_id)
        except NotFound:
            raise NotFoundError(f"no clip {clip_id}") from None
        if wanted is not None and wanted.id != clip.profile_id:
            raise NotFoundError(f"no clip {clip_id} in profile {wanted.name!r}")
        return clip, wanted or self.repo.get_profile(clip.profile_id)

    def _media_file(self, relative: str) -> Path:
        """The absolute path of a stored media path, refused unless it lies inside <data_dir>/media."""
        path = (self.data_dir / relative).resolve()
        if not path.is_relative_to(self.media_root):
            raise EmoWebError(f"refusing a media path outside the data dir: {relative!r}")
        return path

    def _inside(self, relative: str) -> Path | None:
        """Like `_media_file`, but None for a path outside the media folder (never touched)."""
        try:
            return self._media_file(relative)
        except EmoWebError:
            return None

    def _model_names(self) -> list[str]:
        names = self.predictor.model_names(self._models)
        if not names:
            raise EmoWebError(f"no trained model is available for the {self.backbone!r} backbone profile")
        return names

    # -- profiles ---------------------------------------------------------------------------

    @_storage_errors
    def create_profile(self, name: str, labels: Sequence[str] | None = None, owner: str | None = None) -> ProfileInfo:
        """A new profile; its label set defaults to the models' seven emotions. Text is stored `clean`."""
        labels = [clean(label) for label in labels] if labels else list(LABEL7)
        return profile_info(self.repo.create_profile(clean(name or ""), labels, None if owner is None else clean(owner)))

    @_storage_errors
    def list_profiles(self, owner: str | None = None) -> list[ProfileInfo]:
        return [profile_info(p) for p in self.repo.list_profiles(None if owner is None else clean(owner))]

    @_storage_errors
    def get_profile(self, ref: int | str, owner: str | None = None) -> ProfileInfo:
        """A profile by id or name; with `owner`, another owner's profile is 'no profile'."""
        return profile_info(self._profile(ref, owner))

    @_storage_errors
    def delete_profile(self, ref: int | str) -> dict[str, Any]:
        """Delete a profile, its clips (rows and media files), labels and caches."""
        profile = self._profile(ref)
        paths = self.repo.delete_profile(profile.id)
        removed = 0
        for target in filter(None, map(self._inside, paths)):
            try:
                target.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        folder = self._inside(f"media/{profile.id}")
        if folder is not None and folder != self.media_root:
            shutil.rmtree(folder, ignore_errors=True)  # temp files of an interrupted upload, if any
        self._invalidate(profile.id)
        self._features.drop(profile.id)
        derived = lessons.forget_profile(self.data_dir, profile.id)
        uploads.forget_copies(self.settings.upload_dir, {Path(p).name.split(".")[0] for p in paths} | derived)
        return {"profile": profile.name, "id": profile.id, "clips": len(paths), "files_removed": removed}

    @_storage_errors
    def owner_usage(self, owner: str) -> tuple[int, int]:
        """(clips, bytes of their media files) in all of `owner`'s profiles."""
        paths = self.repo.owner_media(owner)
        targets = [t for t in map(self._inside, paths) if t is not None and t.is_file()]
        return len(paths), sum(t.stat().st_size for t in targets)

    # -- clips ------------------------------------------------------------------------------

    @_storage_errors
    def list_clips(self, profile: int | str) -> list[ClipInfo]:
        return [clip_info(c) for c in self.repo.list_clips(self._profile(profile).id)]

    @_storage_errors
    def get_clip(self, clip_id: int | str) -> ClipInfo:
        return clip_info(self._clip(clip_id)[0])

    @_storage_errors
    def media_path(self, clip_id: int | str) -> Path:
        """Where a clip's media file is (for playback in the UI)."""
        clip, _ = self._clip(clip_id)
        return self._media_file(clip.media_path)

    def _check_upload(self, path: Path) -> None:
        if not path.exists():
            raise MediaError(f"file not found: {display_name(path)}")
        if not path.is_file():
            raise MediaError(f"not a file: {display_name(path)}")
        size = path.stat().st_size
        if size == 0:
            raise MediaError(f"empty file (0 bytes): {display_name(path)}")
        limit = self.settings.max_upload_mb * 1024 * 1024
        if size > limit:
            raise MediaError(f"file too large: {display_name(path)} is {size / 2**20:.0f} MB, the limit is {self.settings.max_upload_mb:g} MB")

    @_storage_errors
    def ingest(
        self,
        path: str | Path,
        profile: int | str,
        source: str = "upload",
        original_name: str | None = None,
        progress: Progress | None = None,
        explain: bool = False,
    ) -> ClipResult:
        """Store a clip in a profile and every model's answer on it. The same content uploaded again
        (same sha256) is recognised: the existing clip comes back with `new=False`, answered from its
        stored features (`outputs` None), unless `explain`: then its stored media is run through the
        models once more for the full outputs (attention maps ...), storing nothing new.
        `progress(stage)` is called as decoding and each model start."""
        prof = self._profile(profile)
        path = Path(path)
        self._check_upload(path)
        sha = file_sha256(path)
        name = clean(original_name if original_name is not None else path.name)
        existing = self.repo.find_clip(prof.id, sha)
        if existing is not None:
            return self._known(prof, existing, explain, progress)
        try:
            return self._ingest_new(prof, path, sha, source, name, progress)
        except _AlreadyStored as raced:
            return self._known(prof, raced.clip, explain, progress)

    def _known(self, prof: Profile, clip: Clip, explain: bool = False, progress: Progress | None = None) -> ClipResult:
        stored = self.repo.get_features(clip.id, self.backbone)
        if not any(cachebuild.split_name(n)[1] == cachebuild.LOGITS for n in stored):
            return self._encode_stored(prof, clip, progress)  # stored under another backbone profile only
        predictions = self._score(prof, stored, clip.id)
        self._record_predictions(clip.id, predictions)
        outputs = None
        if explain:
            media = self._media_file(clip.media_path)
            if not media.is_file():
                raise MediaError(f"the media file of clip {clip.id} is missing")
            outputs = self._compute(prof, media, None, progress)[3]
            self._apply_to_outputs(outputs, predictions, prof)
        return ClipResult(clip_info(clip), False, predictions, outputs)

    def _compute(self, prof: Profile, path: Path, sha: str | None, progress: Progress | None = None):
        """Decode + backbones once, every model once: (arrays to store, kind, duration, Prediction)."""
        names = self._model_names()
        feats = self.predictor.extractor(path, progress)
        if sha is not None and feats.sha256 != sha:
            raise MediaError(f"{display_name(path)} changed while it was being read: upload it again")
        result = self.predictor.run_models(feats, names, progress=progress, labels=list(prof.label_set))
        arrays: dict[str, np.ndarray] = {}
        for model, out in result.outputs.items():
            arrays[f"{model}.{cachebuild.FUSED}"] = out.embedding[0].detach().float().cpu().numpy()
            for modality, z in out.modality_embeddings.items():
                if feats.modalities.get(modality, True) and bool(z[0].any()):  # a zero row: the clip lacks it
                    arrays[f"{model}.{modality}"] = z[0].detach().float().cpu().numpy()
            base = out.logits if out.logits is not None else logits_from_probs(out.probs)
            arrays[cachebuild.logits_name(model)] = _align(base[0], out.labels, prof.label_set)
        return arrays, feats.kind, feats.duration, result

    def _reusable(self, prof: Profile, sha: str) -> tuple[dict[str, np.ndarray], str, float | None] | None:
        """Stored arrays of the same content in another profile with the same label set: no re-encoding."""
        for other in self.repo.clips_by_sha(sha):
            if other.profile_id == prof.id:
                continue
            other_labels = self.repo.get_profile(other.profile_id).label_set
            stored = self.repo.get_features(other.id, self.backbone)
            logits = [a for n, a in stored.items() if cachebuild.split_name(n)[1] == cachebuild.LOGITS]
            if logits and all(a.size == len(prof.label_set) for a in logits) and other_labels[: len(prof.label_set)] == list(prof.label_set):
                return stored, other.kind, other.duration
        return None

    def _ingest_new(self, prof: Profile, path: Path, sha: str, source: str, name: str, progress: Progress | None) -> ClipResult:
        reused = self._reusable(prof, sha)
        outputs = None
        if reused is None:
            arrays, kind, duration, outputs = self._compute(prof, path, sha, progress)  # bad media fails here: nothing written
        else:
            arrays, kind, duration = reused
        predictions = self._score(prof, arrays)
        if outputs is not None:
            self._apply_to_outputs(outputs, predictions, prof)
        relative = f"media/{prof.id}/{sha}{safe_suffix(name) or safe_suffix(path.name)}"
        final = self._media_file(relative)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=tempfiles.temp_prefix("ingest"), suffix=".part")
        placed = False
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as dst, open(path, "rb") as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    dst.write(block)
                dst.flush()
                os.fsync(dst.fileno())
            if digest.hexdigest() != sha:
                raise MediaError(f"{display_name(path)} changed while it was being read: upload it again")
            _test_pause(INGEST_PAUSE_ENV, "written", "ingest: paused with the media in a temp file")
            with self._sessions() as session, session.begin():  # every row of the clip, or none
                repo = CaregiverRepository(session)
                clip, new = repo.add_clip(prof.id, sha, relative, kind, source, name, duration)
                if not new:
                    raise _AlreadyStored(clip)
                repo.put_features(clip.id, self.backbone, arrays)
                for model, p in _answers(predictions):
                    repo.add_prediction(clip.id, model, p.probs, self._version(p))
                info = clip_info(clip)
                os.replace(tmp, final)  # last step before the commit
                placed = True
                _test_pause(INGEST_PAUSE_ENV, "commit", "ingest: paused before commit")
        except BaseException as exc:
            if placed:
                final.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
                raise EmoWebError(self.no_space_message(_NO_SPACE[exc.errno])) from None
            raise
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return ClipResult(info, True, predictions, outputs)

    def _encode_stored(self, prof: Profile, clip: Clip, progress: Progress | None = None) -> ClipResult:
        """Features for this backbone profile from the clip's stored media (first use of a profile)."""
        media = self._media_file(clip.media_path)
        if not media.is_file():
            raise MediaError(f"the media file of clip {clip.id} is missing")
        arrays, _, _, outputs = self._compute(prof, media, None, progress)
        predictions = self._score(prof, arrays, clip.id)
        self._apply_to_outputs(outputs, predictions, prof)
        with self._sessions() as session, session.begin():
            repo = CaregiverRepository(session)
            repo.put_features(clip.id, self.backbone, arrays)
            for model, p in _answers(predictions):
                repo.add_prediction(clip.id, model, p.probs, self._version(p))
        return ClipResult(clip_info(clip), False, predictions, outputs)

    # -- predictions ------------------------------------------------------------------------

    @_storage_errors
    def predict(
        self, ref: int | str | Path, profile: int | str, explain: bool = False, progress: Progress | None = None
    ) -> ClipResult:
        """Every model's answer with the profile's cache. `ref`: a stored clip's id (int; answered
        from stored features) or a media file's path (ingested first, so it can be labelled).
        `explain`: also the full model outputs (see `ingest`)."""
        if isinstance(ref, int):
            clip, prof = self._clip(ref, profile)
            return self._known(prof, clip, explain, progress)
        return self.ingest(ref, profile, explain=explain, progress=progress)

    def _version(self, p: ModelPrediction) -> str:
        return self.backbone + (f"+cache{p.cache_snapshot}" if p.cache_snapshot is not None else "")

    def _record_predictions(self, clip_id: int, predictions: dict[str, ModelPrediction]) -> None:
        """Store an answer only when it may differ from the latest stored one (other model version or cache)."""
        latest = self.repo.latest_predictions(clip_id)
        for model, p in _answers(predictions):
            old = latest.get(model)
            if old is None or old.model_version != self._version(p) or old.probs != p.probs:
                self.repo.add_prediction(clip_id, model, p.probs, self._version(p))

    def _invalidate(self, profile_id: int) -> None:
        with self._lock:
            for key in [k for k in self._caches if k[0] == profile_id]:
                del self._caches[key]

    def _active_caches(self, prof: Profile) -> dict[str, tuple[int, FewShotCache, list[int]]]:
        """{model: (snapshot id, cache, clip id per cache row)} of a profile's active snapshots;
        reloaded when the active id changed since it was loaded (a rebuild in any process)."""
        active = self.repo.active_snapshot_ids(prof.id)
        out = {}
        with self._lock:
            for key in [k for k in self._caches if k[0] == prof.id and active.get(k[1]) != self._caches[k][0]]:
                del self._caches[key]
            for model, snapshot_id in active.items():
                hit = self._caches.get((prof.id, model))
                if hit is None:
                    snapshot = self.repo.get_snapshot(snapshot_id)
                    if snapshot is None:  # replaced between the two reads
                        continue
                    hit = (snapshot_id, *self._load_snapshot(prof, model, snapshot))
                    self._caches[(prof.id, model)] = hit
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
        backbone = snapshot.hyper.get("backbone_profile", self.backbone)
        clip_ids = arrays.get("clip_ids", np.zeros(0, np.int64)).tolist()
        with self._sessions() as session, session.begin(), self._features.lock:
            repo = CaregiverRepository(session)
            repo.begin_snapshot()
            stored = self._features.read(repo, prof.id, backbone, clip_ids)
            return cachebuild.from_features(model, arrays, snapshot.labels, snapshot.hyper, stored.arrays)

    def _score(self, prof: Profile, stored: dict[str, np.ndarray], clip_id: int | None = None) -> dict[str, ModelPrediction]:
        """Each stored model's answer from its stored arrays plus the profile's active cache; a labelled clip
        (`clip_id`) is answered without its own cached entry, so its answer is not its label read back."""
        caches = self._active_caches(prof)
        by_model: dict[str, dict[str, np.ndarray]] = {}
        for name, array in stored.items():
            model, part = cachebuild.split_name(name)
            by_model.setdefault(model, {})[part] = array
        predictions = {}
        for model, parts in sorted(by_model.items()):
            if cachebuild.LOGITS not in parts:
                continue
            base = torch.from_numpy(np.asarray(parts[cachebuild.LOGITS], np.float32).reshape(-1))
            base_labels = list(prof.label_set[: base.numel()])
            base = base[: len(base_labels)]
            query = {m: torch.from_numpy(np.asarray(a, np.float32).reshape(1, -1)) for m, a in parts.items() if m != cachebuild.LOGITS}
            decided = cachebuild.has_modality(parts)
            snapshot_id, cache, clip_ids = caches.get(model, (None, None, [])) if decided else (None, None, [])
            cache, clip_ids = cachebuild.without_clip(cache, clip_ids, clip_id)
            labels, logits, nearest = cachebuild.score(base, base_labels, query, cache, clip_ids)
            used = snapshot_id if cache is not None and len(cache) and cache.alpha > 0 else None
            probs = logits.softmax(-1)[0].tolist()
            predictions[model] = ModelPrediction(
                model=model, label=labels[int(np.argmax(probs))] if decided else None, probs=dict(zip(labels, probs)),
                margin=_margin(probs), cache_snapshot=used, nearest=nearest[0], decided=decided,
            )
        return predictions

    @staticmethod
    def _apply_to_outputs(outputs, predictions: dict[str, ModelPrediction], prof: Profile) -> None:
        """Make the full model outputs (shown by the UI) carry the cached answer too."""
        for model, out in outputs.outputs.items():
            p = predictions.get(model)
            if p is None or p.cache_snapshot is None:
                continue
            out.labels = list(p.probs)
            out.probs = torch.tensor([list(p.probs.values())])
            out.logits = out.probs.clamp_min(1e-12).log()
            out.similarity["nearest_labelled"] = {f"clip {n['clip_id']} ({n['label']})": n["similarity"] for n in p.nearest}
            out.notes.append(f"few-shot cache of profile {prof.name!r} applied (snapshot {p.cache_snapshot})")

    # -- corrections and the queue ----------------------------------------------------------

    @_storage_errors
    def record_correction(
        self,
        clip_id: int | str,
        label: str,
        annotator: str = "",
        note: str = "",
        allow_new_label: bool = False,
        profile: int | str | None = None,
    ) -> CorrectionInfo:
        """Label a clip (append-only history). A label outside the profile's set is refused unless
        `allow_new_label`, which adds it to the set. Text is stored `clean`."""
        clip, prof = self._clip(clip_id, profile)
        label, annotator, note = (clean(x or "") for x in (label, annotator, note))
        label = label.strip()
        if label and label not in prof.label_set and not allow_new_label:
            raise EmoWebError(
                f"label {label!r} is not in the label set of profile {prof.name!r} ({', '.join(prof.label_set)}); "
                "to add it, allow a new label explicitly (--allow-new-label)"
            )
        c = self.repo.add_correction(clip.id, label, annotator, note, allow_new_label)
        return CorrectionInfo(c.id, c.clip_id, c.label, c.annotator, c.note, c.created)

    @_storage_errors
    def undo_last_correction(self, clip_id: int | str, annotator: str = "", profile: int | str | None = None) -> dict[str, Any]:
        """Withdraw the clip's current label; the one before it (or none) is current again."""
        clip, _ = self._clip(clip_id, profile)
        undo = self.repo.undo_last_correction(clip.id, clean(annotator or ""))
        return {"clip_id": clip.id, "undone": undo.label, "current": self.repo.current_label(clip.id)}

    @_storage_errors
    def corrections(self, clip_id: int | str) -> list[CorrectionInfo]:
        """The clip's label history, oldest first (undo rows included, with their `undoes` label)."""
        clip, _ = self._clip(clip_id)
        return [CorrectionInfo(c.id, c.clip_id, c.label, c.annotator, c.note, c.created) for c in self.repo.corrections(clip.id)]

    @_storage_errors
    def current_label(self, clip_id: int | str) -> str | None:
        clip, _ = self._clip(clip_id)
        return self.repo.current_label(clip.id)

    @_storage_errors
    def labelling_queue(self, profile: int | str, limit: int | None = None) -> list[QueueEntry]:
        """Unlabelled first; then clips the models disagree on; then the least sure (smallest margin)."""
        items = self.repo.labelling_queue(self._profile(profile).id, limit)
        return [
            QueueEntry(i.clip.id, i.clip.original_name, i.clip.created, i.label, dict(i.top_labels), i.margin, i.disagree)
            for i in items
        ]

    # -- cache ------------------------------------------------------------------------------

    def _build(
        self, prof: Profile, models: Iterable[str] | None, exclude: set[int], tune: bool | str = "auto"
    ) -> list[cachebuild.Built]:
        """New caches from stored features only (never media): the profile's labelled clips minus `exclude`.
        Features come through the memo (only clips new to it are read), and so do the last leave-one-out
        affinities of each model."""
        t0 = time.perf_counter()
        assembled, memos, seconds = {}, {}, {}
        with self._sessions() as session, session.begin():
            repo = CaregiverRepository(session)
            repo.begin_snapshot()  # labels, features and names from one snapshot of the database
            previous = repo.active_snapshot_hypers(prof.id)
            labels = {c: label for c, label in repo.current_labels(prof.id).items() if c not in exclude}
            with self._features.lock:  # only while reading and assembling: tuning may take seconds
                features = self._features.read(repo, prof.id, self.backbone, labels)
                # a held clip's names are in memory (its features never change); only the others are read
                unheld = features.seen.keys() - features.arrays.row_of.keys()
                names = features.arrays.names() | set(repo.feature_names(prof.id, self.backbone, unheld))
                stored = {m for m, part in map(cachebuild.split_name, names) if part == cachebuild.LOGITS}
                wanted = sorted(set(models) if models is not None else stored | set(previous))
                load = time.perf_counter() - t0  # one read for all models
                for model in wanted:
                    t1 = time.perf_counter()
                    assembled[model] = cachebuild.assemble(model, labels, features.arrays)
                    memos[model] = features.loo.setdefault(model, cachebuild.AffinityMemo())
                    seconds[model] = time.perf_counter() - t1
        built = []
        for model in wanted:
            b = cachebuild.build(model, assembled[model], prof.label_set, tune, previous.get(model), memo=memos[model])
            # only a cache that passed the same judgement is worth keeping (older snapshots were never judged)
            b.keep_previous = not b.hyper["active"] and bool((previous.get(model) or {}).get("active"))
            b.hyper["backbone_profile"] = self.backbone  # where `_load_snapshot` finds the features
            b.metrics["timings"] = {"load": round(load, 4), "assemble": round(seconds[model], 4), **b.metrics["timings"]}
            built.append(b)
        return built

    def _remember(self, prof: Profile, built: list[cachebuild.Built], results: dict[str, ModelRebuild]) -> None:
        """After the commit: the caches just built are what their snapshots would load (the same stored
        features), so predictions use them without reading the snapshots back."""
        with self._lock:
            self._invalidate(prof.id)
            for b in built:
                if not b.keep_previous:  # a kept previous cache is reloaded from its (still active) snapshot
                    self._caches[(prof.id, b.model)] = (results[b.model].snapshot_id, b.cache, b.clip_ids)

    def _save(self, repo: CaregiverRepository, prof: Profile, built: list[cachebuild.Built]) -> dict[str, ModelRebuild]:
        results = {}
        for b in built:
            t0 = time.perf_counter()
            snapshot = repo.save_snapshot(
                prof.id, b.model, cachebuild.payload(b), b.cache.example_labels, b.hyper, b.metrics,
                activate=not b.keep_previous,
            )
            repo.prune_snapshots(prof.id, b.model, KEEP_SNAPSHOTS)
            m = b.metrics
            timings = {**m["timings"], "save": round(time.perf_counter() - t0, 4)}
            results[b.model] = ModelRebuild(
                model=b.model, snapshot_id=snapshot.id, n=len(b.cache), n_per_label=cachebuild.n_per_label(b.cache.example_labels),
                alpha=b.cache.alpha, beta=b.cache.beta, tuning=b.hyper["tuning"], before=m["before"], after=m["after"],
                skipped=m["skipped"], seconds=round(sum(timings.values()), 4), timings=timings, scored=m["scored"],
                active=bool(b.hyper["active"]), outcome=cachebuild.outcome(b.hyper, m, b.keep_previous),
            )
        _test_pause(REBUILD_PAUSE_ENV, "commit", "rebuild: paused before commit")
        return results

    @_storage_errors
    def rebuild_cache(
        self, profile: int | str, models: Iterable[str] | None = None, tune: bool | str = "auto"
    ) -> dict[str, ModelRebuild]:
        """Rebuild each model's cache from the profile's labelled clips' stored features, tune alpha/beta
        by cross-validation when there are enough (`tune`: see `cachebuild.build`; True forces it),
        measure leave-one-out accuracy before/after, and activate all the new snapshots in one transaction."""
        prof = self._profile(profile)
        built = self._build(prof, models, exclude=set(), tune=tune)
        with self._sessions() as session, session.begin():
            results = self._save(CaregiverRepository(session), prof, built)
            t0 = time.perf_counter()
        commit = round(time.perf_counter() - t0, 4)  # shared by all models, like load
        results = {
            m: dataclasses.replace(r, seconds=round(r.seconds + commit, 4), timings={**r.timings, "commit": commit})
            for m, r in results.items()
        }
        self._remember(prof, built, results)
        self._features.persist(prof.id, self.backbone)
        return results

    @_storage_errors
    def snapshots(self, profile: int | str) -> list[dict[str, Any]]:
        """A profile's cache snapshots, newest first (without payloads)."""
        prof = self._profile(profile)
        return [
            {"id": s.id, "model": s.model, "active": s.active, "built_at": s.built_at.isoformat(), "n_per_label": s.n_per_label,
             "hyper": {k: v for k, v in s.hyper.items() if k != "label_set"}, "metrics": s.metrics}
            for s in self.repo.list_snapshots(prof.id)
        ]

    # -- deletion ---------------------------------------------------------------------------

    @_storage_errors
    def delete_clip(self, clip_id: int | str, profile: int | str | None = None) -> dict[str, Any]:
        """Delete a clip: media file, features, predictions, corrections, and every cache snapshot
        holding it; caches whose active snapshot held it are rebuilt without it, in the same transaction."""
        clip, prof = self._clip(clip_id, profile)
        target = self._inside(clip.media_path)  # a path outside the media folder is never removed
        holding = set(self.repo.snapshots_with_clip(prof.id, clip.id))
        active = self.repo.active_snapshot_ids(prof.id)
        affected = sorted(m for m, sid in active.items() if sid in holding)
        built = self._build(prof, affected, exclude={clip.id}) if affected else []
        with self._sessions() as session, session.begin():
            repo = CaregiverRepository(session)
            repo.delete_clip(clip.id)
            rebuilt = self._save(repo, prof, built)
            repo.delete_snapshots(holding)  # all inactive now
        self._remember(prof, built, rebuilt)
        self._features.forget_clips(self.repo, prof.id, {clip.id})  # in memory, and in the file on disk
        if target is not None:
            target.unlink(missing_ok=True)
        derived = lessons.forget_clip(self.data_dir, prof.id, clip.id)
        uploads.forget_copies(self.settings.upload_dir, {clip.sha256} | derived)  # copies handed to the browser too
        return {"clip_id": clip.id, "profile": prof.name, "rebuilt": {m: r.to_dict() for m, r in rebuilt.items()}}

    # -- lessons ----------------------------------------------------------------------------

    def _lesson_part(self, clip: Clip, label: str, who: str, seconds: float) -> lessons.Part:
        """A labelled video clip's lesson part: its stretch read from the stored media."""
        if clip.kind != "video":
            raise EmoWebError(f"clip {clip.id} is {clip.kind} only: a lesson needs a video clip")
        path = self._media_file(clip.media_path)
        if not path.is_file():
            raise MediaError(f"the media file of clip {clip.id} is missing")
        who = who.strip() or Path(clip.original_name).stem or f"clip {clip.id}"
        return lessons.Part(path, label, f"{who[:40]} - {label}", lessons.choose(*lessons.timeline(path), seconds=seconds))

    @_storage_errors
    def export_lesson(self, clip_id: int | str, profile: int | str | None = None, slow: float = 1.0,
                      seconds: float = lessons.STRETCH_SECONDS, progress: Progress | None = None) -> lessons.Lesson:
        """Write (or rewrite) the lesson clip of a labelled video clip, stored with its profile.
        `slow` >= 1 slows it down; `seconds` is the length of the stretch that shows the word."""
        clip, prof = self._clip(clip_id, profile)
        current = self.repo.current_corrections(prof.id).get(clip.id)
        if current is None:
            raise EmoWebError(f"clip {clip.id} has no label yet: label it before making a lesson")
        if progress:
            progress("timeline")
        part = self._lesson_part(clip, current.label, current.note, seconds)
        return lessons.render([part], lessons.clip_file(self.data_dir, prof.id, clip.id), slow, progress=progress)

    @_storage_errors
    def export_lesson_set(self, profile: int | str, clip_ids: Sequence[int | str] | None = None, label: str | None = None,
                          slow: float = 1.0, seconds: float = lessons.STRETCH_SECONDS, progress: Progress | None = None) -> lessons.Lesson:
        """Several labelled video clips joined, each after a title card ("<note or name> - <label>"):
        the given `clip_ids`, else up to `lessons.MAX_SET_CLIPS` clips labelled `label`, else the first
        labelled video clip of each label in the profile's label set."""
        prof = self._profile(profile)
        current = self.repo.current_corrections(prof.id)
        if clip_ids:
            ids = [self._clip(c, prof.id)[0].id for c in clip_ids]
            missing = [i for i in ids if i not in current]
            if missing:
                raise EmoWebError(f"clip {missing[0]} has no label yet: label it before making a lesson")
        else:
            clips = self.repo.clips_by_ids(current)
            videos = [c for c in sorted(current) if clips[c].kind == "video"]
            if label is not None:
                ids = [c for c in videos if current[c].label == clean(label).strip()][: lessons.MAX_SET_CLIPS]
            else:
                ids = [next(c for c in videos if current[c].label == lab) for lab in prof.label_set
                       if any(current[c].label == lab for c in videos)]
            if not ids:
                raise EmoWebError(f"no labelled video clip{' labelled ' + repr(label) if label else ''} in profile {prof.name!r}")
        clips = self.repo.clips_by_ids(ids)
        if progress:
            progress("timeline")
        parts = [self._lesson_part(clips[i], current[i].label, current[i].note, seconds) for i in ids]
        return lessons.render(parts, lessons.set_file(self.data_dir, prof.id, ids), slow, titles=True, progress=progress)

    @_storage_errors
    def list_lessons(self, profile: int | str) -> list[Path]:
        """The profile's stored lesson files, newest first."""
        return lessons.listed(self.data_dir, self._profile(profile).id)

    # -- label files ------------------------------------------------------------------------

    @_storage_errors
    def export_labels(self, profile: int | str, fmt: str = "csv") -> str:
        """The profile's current labels: one row per labelled clip (sha256, original name, label,
        annotator, note, created), as CSV or JSON. Values are as stored."""
        prof = self._profile(profile)
        current = self.repo.current_corrections(prof.id)
        clips = self.repo.clips_by_ids(current)
        rows = [
            {"sha256": clips[cid].sha256, "original_name": clips[cid].original_name, "label": c.label,
             "annotator": c.annotator, "note": c.note, "created": c.created.isoformat()}
            for cid, c in sorted(current.items())
        ]
        return labelfiles.render(prof.name, prof.label_set, rows, fmt)

    @_storage_errors
    def import_labels(
        self, profile: int | str, text: str | bytes, fmt: str = "csv", annotator: str | None = None, allow_new_labels: bool = False
    ) -> ImportReport:
        """Apply a label file to the profile's clips matched by sha256 (in one transaction). A row whose
        label already is the clip's current label changes nothing; unmatched rows are reported.
        `annotator` (when not empty) replaces the file's annotators; the import time is recorded,
        not the file's `created`. `text` as bytes: the file's content, read as UTF-8 (`safetext.decode`)."""
        prof = self._profile(profile)
        rows = labelfiles.parse(decode(text) if isinstance(text, bytes) else text, fmt)
        annotator = clean(annotator or "")
        clips = {c.sha256: c for c in self.repo.list_clips(prof.id)}
        current = self.repo.current_labels(prof.id)
        label_set = list(prof.label_set)
        imported = unchanged = 0
        unmatched: list[str] = []
        refused: list[str] = []
        with self._sessions() as session, session.begin():
            repo = CaregiverRepository(session)
            for number, row in enumerate(rows, start=1):
                sha = row.get("sha256", "").strip().lower()
                label = row.get("label", "").strip()
                if not _SHA256.fullmatch(sha):
                    refused.append(f"row {number}: not a sha256: {sha[:80]!r}")
                    continue
                clip = clips.get(sha)
                if clip is None:
                    unmatched.append(f"{sha} {row.get('original_name', '')}".strip())
                    continue
                if not label:
                    refused.append(f"row {number}: empty label")
                    continue
                if current.get(clip.id) == label:
                    unchanged += 1
                    continue
                if label not in label_set and not allow_new_labels:
                    refused.append(f"row {number}: label {label!r} is not in the label set of {prof.name!r}")
                    continue
                repo.add_correction(clip.id, label, annotator or row.get("annotator", ""),
                                    row.get("note", ""), allow_new_label=allow_new_labels)
                if label not in label_set:
                    label_set.append(label)
                current[clip.id] = label
                imported += 1
        return ImportReport(imported, unchanged, unmatched, refused)
