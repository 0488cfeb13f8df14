"""Lesson videos of a profile's labelled clips (`lessons` renders them), stored with the profile."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from emoweb.errors import EmoWebError
from emoweb.safetext import clean
from emoweb.services import lessons
from emoweb.services.context import Progress, ServiceContext
from emoweb.services.corrections import known_label, not_in_label_set
from storage.schema import Clip, Profile


class LessonExport:
    """Which clips make a lesson and where it goes; profiles and clips come resolved (`ServiceContext`)."""

    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx

    def _part(self, clip: Clip, label: str, who: str, seconds: float) -> lessons.Part:
        """A labelled video clip's lesson part: its stretch read from the stored media."""
        if clip.kind != "video":
            raise EmoWebError(f"clip {clip.id} is {clip.kind} only: a lesson needs a video clip")
        path = self.ctx.stored_media(clip)
        who = who.strip() or Path(clip.original_name).stem or f"clip {clip.id}"
        return lessons.Part(path, label, f"{who[:40]} - {label}", lessons.choose(*lessons.timeline(path), seconds=seconds))

    def one(self, clip: Clip, prof: Profile, slow: float, seconds: float, progress: Progress | None) -> lessons.Lesson:
        """See `CaregiverService.export_lesson`."""
        current = self.ctx.repo.current_corrections(prof.id).get(clip.id)
        if current is None:
            raise EmoWebError(f"clip {clip.id} has no label yet: label it before making a lesson")
        if progress:
            progress("timeline")
        part = self._part(clip, current.label, current.note, seconds)
        return lessons.render([part], lessons.clip_file(self.ctx.data_dir, prof.id, clip.id, slow), slow, progress=progress)

    def set(self, prof: Profile, clip_ids: Sequence[int | str] | None, label: str | None, slow: float, seconds: float,
            progress: Progress | None) -> lessons.Lesson:
        """See `CaregiverService.export_lesson_set`."""
        repo = self.ctx.repo
        current = repo.current_corrections(prof.id)
        skipped: list[str] = []
        if clip_ids:
            ids = [self.ctx.clip(c, prof.id)[0].id for c in clip_ids]
            missing = [i for i in ids if i not in current]
            if missing:
                raise EmoWebError(f"clip {missing[0]} has no label yet: label it before making a lesson")
        else:
            clips = repo.clips_by_ids(current)
            videos = [c for c in sorted(current) if clips[c].kind == "video"]
            if label is not None:
                label = known_label(clean(label), list(prof.label_set))
                if label not in prof.label_set:
                    raise EmoWebError(not_in_label_set(label, prof))
                ids = [c for c in videos if current[c].label == label][: lessons.MAX_SET_CLIPS]
            else:
                ids = [next(c for c in videos if current[c].label == lab) for lab in prof.label_set
                       if any(current[c].label == lab for c in videos)]
                shown = {current[c].label for c in ids}
                skipped = [lab for lab in prof.label_set if lab not in shown and any(x.label == lab for x in current.values())]
            if not ids:
                which = f"labelled {label!r}" if label else "labelled"
                raise EmoWebError(f"no video clip in profile {prof.name!r} is {which} yet: a lesson is made of videos "
                                  "(a face and a voice), not of sound or photos alone")
        clips = repo.clips_by_ids(ids)
        if progress:
            progress("timeline")
        parts = [self._part(clips[i], current[i].label, current[i].note, seconds) for i in ids]
        lesson = lessons.render(parts, lessons.set_file(self.ctx.data_dir, prof.id, ids, slow), slow, titles=True, progress=progress)
        if skipped:  # labelled, but only on sound or photos: say so rather than leave them out without a word
            lesson.notes.insert(0, f"not in the set: {', '.join(skipped)} (labelled only on sound or photos; a lesson needs a video)")
        return lesson
