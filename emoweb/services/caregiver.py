"""The caregiver loop as plain Python: profiles, ingest, predict, corrections, cache rebuilds, label
files, lessons, deletion. What the CLI, the Gradio UI and the tests call; no gradio here.

`CaregiverService` is the one entry point and only a facade: it turns user input (names, ids, paths)
into stored rows (`ServiceContext`), hands them to the module that does the job, and turns storage
errors into one-line `emoweb.errors`. The jobs, each in its own module:
- `ingest`: media in, features and answers stored (and stored clips answered again);
- `predictions`: answers from stored features plus the profile's active few-shot cache;
- `corrections`: labels, undo, the labelling queue, label files (storage only);
- `rebuilds`: caches rebuilt from stored features and saved as snapshots;
- `deletion`: a profile or clip deleted everywhere it was kept;
- `lessonexport`: lesson videos of labelled clips.
Job modules are imported on first use: a command that only touches storage, or names an unknown
profile, answers without loading torch (ingest, predictions, rebuilds and deletion need it).
To add a job: a module with a class built from a `ServiceContext`, a `_Job` attribute here, and a
method that resolves its input (before touching the job, so bad input is answered fast) and calls it.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from emoweb import safetext
from emoweb.config import Settings, get_settings
from emoweb.errors import EmoWebError
from emoweb.safetext import clean
from emoweb.services import lessons, shown, uploads
from emoweb.services.context import Pause, Progress, ServiceContext, clip_info, profile_info, storage_errors
from emoweb.services.headline import Headline, of_clip
from emoweb.services.records import ClipInfo, ClipResult, CorrectionInfo, ImportReport, ModelRebuild, ProfileInfo, QueueEntry
from models import LABEL7

if TYPE_CHECKING:
    from emoweb.services.corrections import Corrections
    from emoweb.services.deletion import Deletion
    from emoweb.services.ingest import Ingest
    from emoweb.services.lessonexport import LessonExport
    from emoweb.services.predictions import Predictions
    from emoweb.services.rebuilds import Rebuilds

J = TypeVar("J")


class _Job(Generic[J]):
    """A job of the service: class `name` of module `emoweb.services.<module>`, imported and built (from
    the service's context) on first use, so a command imports torch only when its job needs it."""

    def __init__(self, module: str, name: str):
        self.module, self.name = f"emoweb.services.{module}", name

    def __get__(self, service: CaregiverService | None, owner: type | None = None) -> J:
        if service is None:  # looked up on the class (introspection)
            return self  # type: ignore[return-value]
        return service.ctx.once(getattr(importlib.import_module(self.module), self.name))


class CaregiverService:
    """One per process (or per test): the database, the data dir, and optionally a shared Predictor.
    `pause(stage)` is called at named points of a write (see `context.Pause`); tests only."""

    def __init__(self, settings: Settings | None = None, predictor: Any = None, models: str = "all", pause: Pause | None = None):
        self.ctx = ServiceContext(settings or get_settings(), predictor, models, pause)
        self.settings, self.repo, self.backbone = self.ctx.settings, self.ctx.repo, self.ctx.backbone
        self.data_dir, self.media_root = self.ctx.data_dir, self.ctx.media_root
        self.ctx.remove_interrupted_writes()

    @property
    def predictor(self):
        """The shared Predictor (backbones + models), created on first need: only new media needs it."""
        return self.ctx.predictor

    def close(self) -> None:
        """Finish writing feature memos and release the database connections."""
        self.ctx.close()

    def no_space_message(self, reason: str, database: bool = False) -> str:
        """The one line for a write refused for lack of space, saying where."""
        return self.ctx.no_space_message(reason, database)

    clip_id = staticmethod(ServiceContext.clip_id)

    # -- the jobs, each built once, on first use ---------------------------------------------

    _ingest: _Job[Ingest] = _Job("ingest", "Ingest")
    _predictions: _Job[Predictions] = _Job("predictions", "Predictions")
    _rebuilds: _Job[Rebuilds] = _Job("rebuilds", "Rebuilds")
    _deletion: _Job[Deletion] = _Job("deletion", "Deletion")
    _corrections: _Job[Corrections] = _Job("corrections", "Corrections")
    _lessons: _Job[LessonExport] = _Job("lessonexport", "LessonExport")

    # -- profiles and clips -----------------------------------------------------------------

    @storage_errors
    def create_profile(self, name: str, labels: Sequence[str] | None = None, owner: str | None = None) -> ProfileInfo:
        """A new profile; its label set defaults to the models' seven emotions. Names and labels are stored
        `safetext.name` (clean, NFC). Refused, one line each: a name that is a whole number (it would read as
        another profile's id), a name that reads like one of the owner's profiles ('anna' beside 'Anna'), and
        two labels that read alike ('happy', 'Happy')."""
        name = safetext.name(name or "")
        owner = None if owner is None else clean(owner)
        if name.isascii() and name.isdigit():
            raise EmoWebError(f"profile name {name!r} is a number, which reads as a profile id: add a word (e.g. 'Kid {name}')")
        alike = [p for p in self.repo.list_profiles(owner) if safetext.name_key(p.name) == safetext.name_key(name) != "" and p.name != name]
        if alike:
            raise EmoWebError(f"profile name {name!r} reads like profile {alike[0].name!r} (id {alike[0].id}): choose another name")
        labels = [safetext.name(label) for label in labels] if labels else list(LABEL7)
        keys: dict[str, str] = {}
        from emoweb.services.corrections import comma_in

        for label in labels:
            if comma_in(label):
                raise EmoWebError(comma_in(label))
            key = safetext.name_key(label)
            if key in keys:
                raise EmoWebError(f"label {label!r} is given twice" if keys[key] == label else
                                  f"labels {keys[key]!r} and {label!r} read alike: keep one")
            keys[key] = label
        return profile_info(self.repo.create_profile(name, labels, owner))

    @storage_errors
    def list_profiles(self, owner: str | None = None) -> list[ProfileInfo]:
        return [profile_info(p) for p in self.repo.list_profiles(None if owner is None else clean(owner))]

    @storage_errors
    def get_profile(self, ref: int | str, owner: str | None = None) -> ProfileInfo:
        """A profile by id or name; with `owner`, another owner's profile is 'no profile'."""
        return profile_info(self.ctx.profile(ref, owner))

    @storage_errors
    def delete_profile(self, ref: int | str) -> dict[str, Any]:
        """Delete a profile, its clips (rows and media files), labels, caches and lessons:
        {profile, id, clips, files_removed}."""
        profile = self.ctx.profile(ref)  # before the job: an unknown profile is answered without torch
        return self._deletion.profile(profile)

    @storage_errors
    def owner_usage(self, owner: str) -> tuple[int, int]:
        """(clips, bytes of their media files) in all of `owner`'s profiles."""
        paths = self.repo.owner_media(owner)
        targets = [t for t in map(self.ctx.inside, paths) if t is not None and t.is_file()]
        return len(paths), sum(t.stat().st_size for t in targets)

    @storage_errors
    def list_clips(self, profile: int | str) -> list[ClipInfo]:
        return [clip_info(c) for c in self.repo.list_clips(self.ctx.profile(profile).id)]

    @storage_errors
    def get_clip(self, clip_id: int | str, profile: int | str | None = None) -> ClipInfo:
        """A clip by id; with `profile`, only a clip of that profile ('no clip 3 in profile ...' otherwise)."""
        return clip_info(self.ctx.clip(clip_id, profile)[0])

    @storage_errors
    def media_path(self, clip_id: int | str) -> Path:
        """Where a clip's media file is (for playback in the UI)."""
        return self.ctx.media_file(self.ctx.clip(clip_id)[0].media_path)

    @storage_errors
    def shown_folder(self, profile: int | str, clip_id: int | str | None = None, labels: bool = False) -> Path:
        """The folder (created, inside the upload folder) where the UI writes what it shows of a clip of
        `profile`; `clip_id` None: of the profile as a whole (lesson videos), or with `labels` its exported
        label files. Deleting the clip or profile deletes it (`services.shown`). An unknown clip, or one
        of another profile, is NotFoundError."""
        if clip_id is None:
            part = shown.LABELS if labels else shown.PROFILE
            return shown.clip_folder(self.settings.upload_dir, self.ctx.profile(profile).id, part)
        clip, prof = self.ctx.clip(clip_id, profile)
        return shown.clip_folder(self.settings.upload_dir, prof.id, clip.id)

    @storage_errors
    def delete_clip(self, clip_id: int | str, profile: int | str | None = None) -> dict[str, Any]:
        """Delete a clip: media file, features, predictions, corrections, lessons, and every cache snapshot
        holding it; caches whose active snapshot held it are rebuilt without it, in the same transaction.
        {clip_id, profile, lessons: how many lesson files made from it were deleted, rebuilt: {model:
        ModelRebuild.to_dict()}}."""
        clip, prof = self.ctx.clip(clip_id, profile)
        return self._deletion.clip(clip, prof)

    # -- ingest and predictions -------------------------------------------------------------

    @storage_errors
    def ingest(self, path: str | Path, profile: int | str, source: str = "upload", original_name: str | None = None,
               progress: Progress | None = None, explain: bool = False) -> ClipResult:
        """Store a clip in a profile and every model's answer on it. The same content uploaded again
        (same sha256) is recognised: the existing clip comes back with `new=False`, answered from its
        stored features (`outputs` None), unless `explain`: then its stored media is run through the
        models once more for the full outputs (attention maps ...), storing nothing new.
        `progress(stage)` is called as decoding and each model start. Bad media: `MediaError`."""
        prof = self.ctx.profile(profile)
        uploads.check_upload(Path(path), self.settings.max_upload_mb)  # before the models load
        return self._ingest.ingest(prof, Path(path), source, original_name, progress, explain)

    @storage_errors
    def predict(self, ref: int | str | Path, profile: int | str, explain: bool = False, progress: Progress | None = None) -> ClipResult:
        """Every model's answer with the profile's cache. `ref`: a stored clip's id (int; answered
        from stored features) or a media file's path (ingested first, so it can be labelled).
        `explain`: also the full model outputs (see `ingest`)."""
        if isinstance(ref, int):
            clip, prof = self.ctx.clip(ref, profile)
            return self._ingest.known(prof, clip, explain, progress)
        return self.ingest(ref, profile, explain=explain, progress=progress)

    def headline(self, result: ClipResult) -> Headline:
        """How sure a clip's answer is, in words (`headline.of_clip`): what the Predict tab, the Label tab
        and the CLI show for a stored clip, with each model's calibrated confidence level. Loads the models."""
        predictor = self.predictor
        levels: dict[str, float] = {}
        for m, p in result.predictions.items():
            if p.decided:  # each model's level only for the labels it was calibrated on (not a caregiver's own set)
                levels.update(predictor.confident_at([m], list(p.probs)))
        return of_clip(result, levels, predictor.backbones.untrained)

    # -- corrections and the queue ----------------------------------------------------------

    @storage_errors
    def record_correction(self, clip_id: int | str, label: str, annotator: str = "", note: str = "",
                          allow_new_label: bool = False, profile: int | str | None = None) -> CorrectionInfo:
        """Label a clip (append-only history). A label outside the profile's set is refused unless
        `allow_new_label`, which adds it to the set. Text is stored `clean`. The clip's current label again,
        without a note, writes nothing (`unchanged`): a second tap must not need a second undo."""
        clip, prof = self.ctx.clip(clip_id, profile)
        return self._corrections.record(clip, prof, label, annotator, note, allow_new_label)

    @storage_errors
    def undo_last_correction(self, clip_id: int | str, annotator: str = "", profile: int | str | None = None) -> dict[str, Any]:
        """Withdraw the clip's current label; the one before it (or none) is current again:
        {clip_id, undone, current}."""
        return self._corrections.undo(self.ctx.clip(clip_id, profile)[0], annotator)

    @storage_errors
    def corrections(self, clip_id: int | str) -> list[CorrectionInfo]:
        """The clip's label history, oldest first (undo rows included, with their `undoes` label)."""
        return self._corrections.history(self.ctx.clip(clip_id)[0])

    @storage_errors
    def current_label(self, clip_id: int | str) -> str | None:
        return self.repo.current_label(self.ctx.clip(clip_id)[0].id)

    @storage_errors
    def labelling_queue(self, profile: int | str, limit: int | None = None) -> list[QueueEntry]:
        """Unlabelled first; then clips the models disagree on; then the least sure (smallest margin)."""
        return self._corrections.queue(self.ctx.profile(profile), limit)

    @storage_errors
    def export_labels(self, profile: int | str, fmt: str = "csv") -> str:
        """The profile's current labels: one row per labelled clip (sha256, original name, label,
        annotator, note, created), as CSV or JSON. Values are as stored."""
        return self._corrections.export(self.ctx.profile(profile), fmt)

    @storage_errors
    def import_labels(self, profile: int | str, text: str | bytes, fmt: str = "csv", annotator: str | None = None,
                      allow_new_labels: bool = False) -> ImportReport:
        """Apply a label file to the profile's clips matched by sha256 (in one transaction). A row whose
        label already is the clip's current label changes nothing; unmatched rows are reported.
        `annotator` (when not empty) replaces the file's annotators; the import time is recorded,
        not the file's `created`. `text` as bytes: the file's content, read as UTF-8 (`safetext.decode`)."""
        return self._corrections.import_file(self.ctx.profile(profile), text, fmt, annotator, allow_new_labels)

    # -- cache ------------------------------------------------------------------------------

    @storage_errors
    def rebuild_cache(self, profile: int | str, models: Iterable[str] | None = None, tune: bool | str = "auto") -> dict[str, ModelRebuild]:
        """Rebuild each model's cache from the profile's labelled clips' stored features, tune alpha/beta
        by cross-validation when there are enough (`tune`: see `cachebuild.build`; True forces it),
        measure leave-one-out accuracy before/after, and activate all the new snapshots in one transaction."""
        prof = self.ctx.profile(profile)
        return self._rebuilds.rebuild(prof, models, tune)

    @storage_errors
    def snapshots(self, profile: int | str) -> list[dict[str, Any]]:
        """A profile's cache snapshots, newest first (without payloads)."""
        return [
            {"id": s.id, "model": s.model, "active": s.active, "built_at": s.built_at.isoformat(), "n_per_label": s.n_per_label,
             "hyper": {k: v for k, v in s.hyper.items() if k != "label_set"}, "metrics": s.metrics}
            for s in self.repo.list_snapshots(self.ctx.profile(profile).id)
        ]

    @storage_errors
    def labels_since_rebuild(self, profile: int | str) -> int:
        """How many label changes (labels given, undone, imported) the profile's cache does not know yet: those
        after its newest rebuild, or all of them before the first. 0: the cache is up to date."""
        prof = self.ctx.profile(profile)
        newest = self.repo.list_snapshots(prof.id)[:1]
        return self.repo.label_changes_since(prof.id, newest[0].built_at if newest else None)

    # -- lessons ----------------------------------------------------------------------------

    @storage_errors
    def export_lesson(self, clip_id: int | str, profile: int | str | None = None, slow: float = 1.0,
                      seconds: float = lessons.STRETCH_SECONDS, progress: Progress | None = None) -> lessons.Lesson:
        """Write (or rewrite) the lesson clip of a labelled video clip, stored with its profile.
        `slow` >= 1 slows it down; `seconds` is the length of the stretch that shows the word."""
        clip, prof = self.ctx.clip(clip_id, profile)
        return self._lessons.one(clip, prof, slow, seconds, progress)

    @storage_errors
    def export_lesson_set(self, profile: int | str, clip_ids: Sequence[int | str] | None = None, label: str | None = None,
                          slow: float = 1.0, seconds: float = lessons.STRETCH_SECONDS, progress: Progress | None = None) -> lessons.Lesson:
        """Several labelled video clips joined, each after a title card ("<note or name> - <label>"):
        the given `clip_ids`, else up to `lessons.MAX_SET_CLIPS` clips labelled `label`, else the first
        labelled video clip of each label in the profile's label set."""
        return self._lessons.set(self.ctx.profile(profile), clip_ids, label, slow, seconds, progress)

    @storage_errors
    def list_lessons(self, profile: int | str) -> list[Path]:
        """The profile's stored lesson files, newest first."""
        return lessons.listed(self.data_dir, self.ctx.profile(profile).id)
