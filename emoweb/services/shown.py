"""What the web app shows of a stored clip, kept where deleting the clip finds it.

Showing a clip's analysis writes files: its face crops and frames as images, a playable copy of its
media, the lesson videos and label files of its profile. Left to the web server, each lands in a
folder named by a hash of its content under the upload folder, where nothing links it back to the
clip, so deleting the clip left them there (and served). Instead the UI writes them into one folder
per clip, `<upload_dir>/shown/profile-<id>/clip-<id>/` (the profile's lesson videos in
`.../profile-<id>/profile/`, its exported label files in `.../labels/`), inside the upload folder the web
server serves from in place, and deleting the clip (or its profile) removes that folder. A label file
names every clip of its profile, so deleting any clip removes the profile's label files too; a lesson
copy is found by content (`lessons.forget_clip`, `uploads.forget_copies`).
"""
from __future__ import annotations

import shutil
from pathlib import Path

SHOWN = "shown"
PROFILE = "profile"  # a profile's files made from several clips (lesson videos)
LABELS = "labels"  # a profile's exported label files


def profile_folder(upload_dir: Path, profile_id: int) -> Path:
    """The folder holding everything shown of one profile's clips (not created)."""
    return Path(upload_dir) / SHOWN / f"profile-{int(profile_id)}"


def clip_folder(upload_dir: Path, profile_id: int, clip_id: int | str | None = None) -> Path:
    """The folder, created, for the files shown of one clip (`clip_id` an int), or of the profile as a
    whole (`PROFILE`, also for None) or its label files (`LABELS`)."""
    name = f"clip-{int(clip_id)}" if isinstance(clip_id, int) else (clip_id or PROFILE)
    folder = profile_folder(upload_dir, profile_id) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def forget_clip(upload_dir: Path, profile_id: int, clip_id: int) -> int:
    """Delete every file shown of the clip, and the profile's label files (they name it); returns how
    many files were removed."""
    folder = profile_folder(upload_dir, profile_id)
    return _remove(folder / f"clip-{int(clip_id)}") + _remove(folder / LABELS)


def forget_profile(upload_dir: Path, profile_id: int) -> int:
    """Delete every file shown of the profile and its clips; returns how many files were removed."""
    return _remove(profile_folder(upload_dir, profile_id))


def _remove(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    count = sum(1 for p in folder.rglob("*") if p.is_file())
    shutil.rmtree(folder, ignore_errors=True)
    return count


def seekable(path: str | Path, folder: Path) -> str:
    """A stored clip as a player can seek in it: `path` itself, or (a browser's own recording, which
    declares no length) a copy in the clip's shown `folder` that does (`media.with_duration`)."""
    from emoweb.pipeline.media import with_duration

    path = Path(path)
    return str(with_duration(path, folder / f"{path.stem}-seekable{path.suffix}"))
