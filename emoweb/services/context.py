"""What every caregiver job shares: settings, the database, the data dir, the shared Predictor, the
feature memo, the caches loaded in this process, and the lookups from user input to stored rows.

No torch here (nor in what it imports at module level): a command that only reads or writes storage,
or fails on an unknown profile, answers without loading torch. What needs the models (the Predictor,
the feature memo, the job modules that score) is imported on first use.
"""
from __future__ import annotations

import functools
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from emoweb.config import Settings
from emoweb.errors import EmoWebError, MediaError, NotFoundError
from emoweb.safetext import clean, name, name_key
from emoweb.services import tempfiles
from emoweb.services.records import ClipInfo, ProfileInfo
from emoweb.services.store import CaregiverRepository
from storage import Invalid, NotFound, StorageError, open_database
from storage.schema import Clip, Profile

if TYPE_CHECKING:
    from emoweb.services.featmemo import FeatureMemo
    from models.cache import FewShotCache

_CLIP_ID = re.compile(r"[0-9]{1,18}")
_PG_DISK_FULL = "53100"  # PostgreSQL's SQLSTATE disk_full

F = TypeVar("F", bound=Callable[..., Any])
J = TypeVar("J")
Progress = Callable[[str], None]  # as emoweb.pipeline.features.Progress: called with a stage or model name
# Called at a named point of a write, just before what it names: "ingest.written" (the upload is in its
# temp file), "ingest.commit" (renamed into place, transaction not committed), "rebuild.commit". The
# default does nothing; a test injects one that waits there, so it can kill the process at a known point.
Pause = Callable[[str], None]
# {(profile id, model): (active snapshot id, its cache, the clip id of each cache row)}
LoadedCaches = dict[tuple[int, str], tuple[int, "FewShotCache", list[int]]]


def no_pause(stage: str) -> None:
    """The default `Pause`: a write never waits."""


def storage_errors(fn: F) -> F:
    """Storage's NotFound/Invalid become the application's one-line errors; a full disk under the
    database says where. For methods of an object with a `ctx` (`ServiceContext`)."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except NotFound as exc:
            raise NotFoundError(str(exc)) from None
        except (Invalid, StorageError) as exc:
            raise EmoWebError(str(exc)) from None
        except DBAPIError as exc:  # a full disk under the database: one line, not the driver's traceback
            orig = exc.orig
            full = getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or getattr(orig, "pgcode", None) == _PG_DISK_FULL
            if not full:
                raise
            raise EmoWebError(self.ctx.no_space_message("disk full", database=True)) from None

    return wrapper  # type: ignore[return-value]


def profile_info(p: Profile) -> ProfileInfo:
    return ProfileInfo(p.id, p.name, p.owner, list(p.label_set), p.created)


def clip_info(c: Clip) -> ClipInfo:
    return ClipInfo(c.id, c.profile_id, c.sha256, c.original_name, c.media_path, c.kind, c.source, c.duration, c.created,
                    list(c.notes))


EMOWEB_MARKS = ("emoweb.sqlite3", "media", "uploads", "memo")  # what only an EmoWeb data folder holds


def private_folder(folder: Path) -> None:
    """The data folder readable by its owner only (0700): it holds the clips, the names and notes in the
    database, and lessons of a child, and the files in it follow the umask (the database was 0644 in a
    0755 folder). Made so when missing; an existing folder is tightened only when it is EmoWeb's own
    (holds one of `EMOWEB_MARKS`), never a folder the data was pointed into that holds other things too."""
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
    elif folder.is_dir() and any((folder / mark).exists() for mark in EMOWEB_MARKS) and folder.stat().st_mode & 0o077:
        folder.chmod(0o700)


class ServiceContext:
    """One per `CaregiverService`. Lock order: `lock` before the feature memo's lock, never after it."""

    def __init__(self, settings: Settings, predictor: Any = None, models: str = "all", pause: Pause | None = None):
        self.settings = settings
        private_folder(Path(settings.data_dir).expanduser())  # before the database file is made in it
        self.sessions = open_database(settings.db_url)
        self.repo = CaregiverRepository(self.sessions)
        self.data_dir = Path(settings.data_dir).expanduser().resolve()
        self.media_root = self.data_dir / "media"
        self.memo_dir = self.data_dir / "memo"
        self.backbone = settings.profile
        self.models = models
        self.pause = pause or no_pause
        self.lock = threading.RLock()
        self.caches: LoadedCaches = {}
        self._predictor = predictor
        self._features: FeatureMemo | None = None
        self._jobs: dict[type, Any] = {}

    def once(self, job: Callable[[ServiceContext], J]) -> J:
        """The one instance of a job class (built from this context on first use; later calls get it)."""
        with self.lock:
            if job not in self._jobs:
                self._jobs[job] = job(self)
            return self._jobs[job]

    @property
    def predictor(self):
        """The shared Predictor (backbones + models), created on first need: only new media needs it."""
        with self.lock:
            if self._predictor is None:
                from emoweb.pipeline.inference import Predictor

                self._predictor = Predictor(self.settings)
            return self._predictor

    @property
    def features(self) -> FeatureMemo:
        """Stored features kept between rebuilds (`featmemo`), also on disk in `<data_dir>/memo`."""
        with self.lock:
            if self._features is None:
                from emoweb.services.featmemo import FeatureMemo

                self._features = FeatureMemo(folder=self.memo_dir)
            return self._features

    def model_names(self) -> list[str]:
        names = self.predictor.model_names(self.models)
        if not names:
            raise EmoWebError(f"no trained model is available for the {self.backbone!r} backbone profile")
        return names

    def invalidate(self, profile_id: int) -> None:
        """Forget the caches loaded for a profile (its snapshots changed or it is gone)."""
        with self.lock:
            for key in [k for k in self.caches if k[0] == profile_id]:
                del self.caches[key]

    def close(self) -> None:
        """Finish writing feature memos and release the database connections."""
        if self._features is not None:
            self._features.flush()
        bind = self.sessions.kw.get("bind")
        if bind is not None:
            bind.dispose()

    # -- from user input to rows ---------------------------------------------------------------

    def profile(self, ref: int | str | ProfileInfo, owner: str | None = None) -> Profile:
        """A profile by id, by an id written as text ('3'), or by name (as typed, or in Unicode NFC); with
        `owner`, only among theirs. Digits name the profile with that id first: a profile name can no longer
        be a number (`CaregiverService.create_profile`), and one named so before is still found by it when no
        profile has that id. Not found: one line, naming a profile whose name reads alike ('ANNA': 'Anna')."""
        if isinstance(ref, ProfileInfo):
            ref = ref.id
        if isinstance(ref, int):
            found = self.repo.find_profile(ref, owner)
        else:
            typed = clean(ref).strip()
            tries = ([int(typed)] if _CLIP_ID.fullmatch(typed) else []) + list(dict.fromkeys([typed, name(typed)]))
            found = next(filter(None, (self.repo.find_profile(r, owner) for r in tries)), None)
            ref = typed
        if found is None:
            alike = [p.name for p in self.repo.list_profiles(owner) if name_key(p.name) == name_key(ref)] if isinstance(ref, str) else []
            raise NotFoundError(f"no profile {ref!r}" + (f" (did you mean {alike[0]!r}?)" if alike else ""))
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

    def clip(self, clip_id: int | str, profile: int | str | ProfileInfo | None = None) -> tuple[Clip, Profile]:
        """A clip and its profile; with `profile`, a clip of another profile is 'no clip'."""
        wanted = self.profile(profile) if profile is not None else None  # an unknown profile is reported first
        clip_id = self.clip_id(clip_id)
        try:
            clip = self.repo.get_clip(clip_id)
        except NotFound:
            raise NotFoundError(f"no clip {clip_id}") from None
        if wanted is not None and wanted.id != clip.profile_id:
            raise NotFoundError(f"no clip {clip_id} in profile {wanted.name!r}")
        return clip, wanted or self.repo.get_profile(clip.profile_id)

    # -- the media folder ----------------------------------------------------------------------

    def media_file(self, relative: str) -> Path:
        """The absolute path of a stored media path, refused unless it lies inside <data_dir>/media."""
        path = (self.data_dir / relative).resolve()
        if not path.is_relative_to(self.media_root):
            raise EmoWebError(f"refusing a media path outside the data dir: {relative!r}")
        return path

    def inside(self, relative: str) -> Path | None:
        """Like `media_file`, but None for a path outside the media folder (never touched)."""
        try:
            return self.media_file(relative)
        except EmoWebError:
            return None

    def stored_media(self, clip: Clip) -> Path:
        """A clip's media file, which must still be there (to encode it again, or to make a lesson)."""
        path = self.media_file(clip.media_path)
        if not path.is_file():
            raise MediaError(f"the media file of clip {clip.id} is missing")
        return path

    def no_space_message(self, reason: str, database: bool = False) -> str:
        """The one line for a write refused for lack of space, saying where."""
        url = make_url(self.settings.db_url)
        if database and url.get_backend_name() != "sqlite":
            return f"not enough disk space on the database server ({reason}): free some space there and try again"
        folder = Path(url.database).parent if database and url.database else self.data_dir
        return f"not enough disk space in the data folder {folder} ({reason}): free some space and try again"

    def remove_interrupted_writes(self) -> None:
        """Remove what a process killed mid-write (SIGKILL, power loss) left: temp files of feature memos
        and uploads of processes that are gone, and media files renamed into place whose transaction
        never committed (no clip row names them). Telling the latter from an ingest between its rename and its commit
        needs SQLite's write lock (held across both), so they are left alone on other databases."""
        tempfiles.sweep(self.memo_dir, tempfiles.MEMO)  # a feature memo's write, killed
        if not self.media_root.is_dir():
            return
        for folder in self.media_root.iterdir():
            tempfiles.sweep(folder, tempfiles.INGEST)
        files = {p.relative_to(self.data_dir).as_posix(): p for p in self.media_root.glob("*/*")
                 if not p.name.startswith(".") and p.is_file()}
        if not files or make_url(self.settings.db_url).get_backend_name() != "sqlite":
            return
        unnamed = set(files) - self.repo.named_media_paths(files)
        if unnamed:
            with self.sessions() as session, session.begin():
                for relative in unnamed - CaregiverRepository(session).named_media_paths(unnamed, lock=True):
                    files[relative].unlink(missing_ok=True)  # under the write lock: no ingest is mid-commit
