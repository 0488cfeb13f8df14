"""Temp files written next to their final path and renamed into place, and the sweep of those a killed
process left: the name carries the writer's pid and a per-process token (pids are reused)."""
from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

PROCESS_TOKEN = secrets.token_hex(4)
INGEST = "ingest"  # an upload on its way into the media folder
MEMO = "memo"  # a feature memo file (`memofile`)


def temp_prefix(kind: str) -> str:
    """Prefix for this process's temp files of one kind (e.g. 'ingest')."""
    return f".{kind}-{os.getpid()}-{PROCESS_TOKEN}-"


def stale(path: Path, kind: str) -> bool:
    """Whether a temp file of `kind` was left by a process that is gone (killed mid-write)."""
    match = re.fullmatch(rf"\.{re.escape(kind)}-([0-9]+)-([0-9a-f]+)-.*", path.name)
    if match is None:
        return True  # not ours to finish: no live writer has this name
    pid = int(match[1])
    if pid == os.getpid():
        return match[2] != PROCESS_TOKEN
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (another user's process)
    return False


def sweep(folder: Path, kind: str) -> None:
    """Delete the temp files of `kind` in `folder` that a process that is gone left."""
    if folder.is_dir():
        for path in folder.glob(f".{kind}-*"):
            if stale(path, kind):
                path.unlink(missing_ok=True)
