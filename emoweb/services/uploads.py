"""Uploads: refused at once when they are no media or too large, and copies of deleted clips removed
from the web server's upload folder.

Gradio keeps every upload (and webcam recording) in its own folder and only sweeps files older than
an hour. A caregiver who deletes a clip expects it gone now, so deletion also removes any upload
whose content has the deleted clip's sha256. Matching is by content, never by name, so nothing
else is touched.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from emoweb.errors import MediaError
from emoweb.pipeline.media import check_media, display_name, file_sha256


def check_upload(path: Path, max_upload_mb: float) -> None:
    """Raise one MediaError line for a file that is missing, empty, no media (`media.check_media`: the
    header only) or over `max_upload_mb` MB: what every entry point that takes an upload calls before
    the backbones and models load."""
    check_media(path)
    size = path.stat().st_size
    if size > max_upload_mb * 2**20:
        raise MediaError(f"file too large: {display_name(path)} is {size / 2**20:.0f} MB, the limit is {max_upload_mb:g} MB")


def forget_copies(folder: Path, sha256s: Iterable[str]) -> int:
    """Delete files under `folder` whose content hash is one of `sha256s` (and the folders that
    leaves empty); returns how many files were removed. A missing folder removes nothing."""
    wanted = {s.lower() for s in sha256s}
    if not wanted or not folder.is_dir():
        return 0
    removed = 0
    for path in sorted(folder.rglob("*"), reverse=True):  # deepest first: files, then their folders
        try:
            if path.is_file() and not path.is_symlink() and file_sha256(path) in wanted:
                path.unlink()
                removed += 1
            elif path.is_dir() and path != folder and not any(path.iterdir()):
                path.rmdir()
        except OSError:
            continue  # a file the server is still writing or already swept: not ours to fail on
    return removed
