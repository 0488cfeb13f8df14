"""Visitors of a deployment without login: whose data is whose, and a public demo's housekeeping.

Without login, each browser (or API client) proves who it is with an owner key it keeps itself (a
random token in the browser's local storage, sent with every request). Only a hash of the key is
stored, as the profiles' owner `visitor:<hash>`, so the database never holds a key someone could
replay. A request without a key gets an owner of its own from its session (a fresh, empty space),
never a shared one and never someone else's.

On a public demo (a Space, or EMOWEB_PUBLIC=1) a visitor's clips are limited in number and size,
and everything of a visitor is deleted after a stated time without activity: profile rows and, by
cascade, clips, features, predictions, labels and caches, plus media files, feature memo files and
the web server's copies of their uploads (`CaregiverService.delete_profile`).
"""
from __future__ import annotations

import hashlib
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from emoweb.config import Settings
from emoweb.errors import EmoWebError
from emoweb.pipeline.media import file_sha256

VISITOR = "visitor:"  # prefix of a visitor's owner name (a login user name never gets it)
OWNER_KEY = re.compile(r"[A-Za-z0-9_-]{22,128}")  # 22 base64url characters: 132 random bits at least
TOUCH_EVERY_S = 60.0  # a visitor's activity is written at most once a minute


def visitor_owner(key: str) -> str:
    """The owner name stored for a visitor's key: its hash, never the key itself.

    Raises EmoWebError for a key that is not 22-128 letters, digits, '-' or '_'."""
    key = (key or "").strip()
    if not OWNER_KEY.fullmatch(key):
        raise EmoWebError("the owner key must be 22 to 128 letters, digits, '-' or '_' (a random token)")
    return VISITOR + hashlib.sha256(key.encode("ascii")).hexdigest()[:40]


def session_owner(session_hash: str) -> str:
    """The owner of a request without a key: its own (per session) space."""
    if not session_hash:
        raise EmoWebError("no owner key and no session: send the X-EmoWeb-Owner header")
    return VISITOR + hashlib.sha256(f"session:{session_hash}".encode()).hexdigest()[:40]


def privacy_notice(settings: Settings) -> str:
    """The public demo's notice for the first screen: what is kept, where, and for how long."""
    hours = settings.visitor_ttl_hours
    return (
        "**Privacy.** A public demo without login: your clips, profiles, labels and caches are kept on this server "
        f"only, in its data folder, and only this browser can see them (a random key kept in its local storage). "
        f"They are deleted {hours:g} hour{'s' if hours != 1 else ''} after your last visit, or at once with "
        f"*Delete everything of mine* below. Limits: {settings.visitor_max_clips} clips, "
        f"{settings.visitor_max_mb:g} MB. Nothing is sent anywhere else."
    )


class Visitors:
    """A public demo's limits and expiry, over the process's CaregiverService."""

    def __init__(self, service: Any, settings: Settings):
        self.service = service
        self.settings = settings
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def ttl(self) -> timedelta:
        return timedelta(hours=self.settings.visitor_ttl_hours)

    def touch(self, owner: str) -> None:
        """Note that `owner` is active (written at most once a minute per owner)."""
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(owner, -TOUCH_EVERY_S) < TOUCH_EVERY_S:
                return
            self._touched[owner] = now
        self.service.repo.touch_owner(owner, datetime.now(timezone.utc))

    def check_room(self, owner: str, profile_id: int, upload: str | Path) -> None:
        """Refuse (one line) a new clip that would take `owner` past the demo's limits (content the
        profile already holds is no new clip)."""
        upload = Path(upload)
        if not upload.is_file() or self.service.repo.find_clip(profile_id, file_sha256(upload)) is not None:
            return
        clips, size = self.service.owner_usage(owner)
        new = upload.stat().st_size
        max_clips, max_mb = self.settings.visitor_max_clips, self.settings.visitor_max_mb
        if clips + 1 > max_clips:
            raise EmoWebError(f"this demo keeps at most {max_clips} clips per visitor: delete some to add more")
        if size + new > max_mb * 2**20:
            raise EmoWebError(f"this demo keeps at most {max_mb:g} MB of clips per visitor "
                              f"({size / 2**20:.1f} MB stored, this one {new / 2**20:.1f} MB): delete some to add more")

    def delete_owner(self, owner: str) -> dict[str, int]:
        """Delete every profile of `owner` with all it holds (rows, media, memo files, upload copies)."""
        profiles = clips = 0
        for info in self.service.list_profiles(owner=owner):
            try:
                clips += self.service.delete_profile(info.id).get("clips", 0)
                profiles += 1
            except EmoWebError:
                continue  # deleted meanwhile by a concurrent request
        with self._lock:
            self._touched.pop(owner, None)
        return {"profiles": profiles, "clips": clips}

    def expire(self) -> list[str]:
        """Delete the data of every visitor idle for longer than the stated time; returns their owners."""
        idle = self.service.repo.idle_owners(VISITOR, datetime.now(timezone.utc) - self.ttl)
        for owner in idle:
            self.delete_owner(owner)
        return idle
