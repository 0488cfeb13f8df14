"""Copies of deleted clips in the web server's upload folder.

Gradio keeps every upload (and webcam recording) in its own folder and only sweeps files older than
an hour. A caregiver who deletes a clip expects it gone now, so deletion also removes any upload
whose content has the deleted clip's sha256. Matching is by content, never by name, so nothing
else is touched.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from emoweb.pipeline.media import file_sha256


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
