"""Deleting a profile or a clip really deletes: rows, media files, stored features (in memory and on
disk), lessons made from it, the copies handed to the browser, what the web app showed of it (face crops,
frames, playable copies: `shown`), and every cache snapshot holding a clip."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from emoweb.services import lessons, shown, uploads
from emoweb.services.context import ServiceContext
from emoweb.services.rebuilds import Rebuilds
from emoweb.services.store import CaregiverRepository
from storage.schema import Clip, Profile


class Deletion:
    """Profiles and clips come resolved (`ServiceContext`)."""

    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
        self.rebuilds = ctx.once(Rebuilds)

    def profile(self, profile: Profile) -> dict[str, Any]:
        """See `CaregiverService.delete_profile`."""
        ctx = self.ctx
        paths = ctx.repo.delete_profile(profile.id)
        removed = 0
        for target in filter(None, map(ctx.inside, paths)):
            try:
                target.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        folder = ctx.inside(f"media/{profile.id}")
        if folder is not None and folder != ctx.media_root:
            shutil.rmtree(folder, ignore_errors=True)  # temp files of an interrupted upload, if any
        ctx.invalidate(profile.id)
        ctx.features.drop(profile.id)
        shown.forget_profile(ctx.settings.upload_dir, profile.id)  # what the web app showed of its clips
        derived = lessons.forget_profile(ctx.data_dir, profile.id)
        uploads.forget_copies(ctx.settings.upload_dir, {Path(p).name.split(".")[0] for p in paths} | derived)
        return {"profile": profile.name, "id": profile.id, "clips": len(paths), "files_removed": removed}

    def clip(self, clip: Clip, prof: Profile) -> dict[str, Any]:
        """See `CaregiverService.delete_clip`."""
        ctx = self.ctx
        target = ctx.inside(clip.media_path)  # a path outside the media folder is never removed
        holding = set(ctx.repo.snapshots_with_clip(prof.id, clip.id))
        active = ctx.repo.active_snapshot_ids(prof.id)
        affected = sorted(m for m, sid in active.items() if sid in holding)
        built = self.rebuilds.build(prof, affected, exclude={clip.id}) if affected else []
        with ctx.sessions() as session, session.begin():
            repo = CaregiverRepository(session)
            repo.delete_clip(clip.id)
            rebuilt = self.rebuilds.save(repo, prof, built)
            repo.delete_snapshots(holding)  # all inactive now
        self.rebuilds.remember(prof, built, rebuilt)
        ctx.features.forget_clips(ctx.repo, prof.id, {clip.id})  # in memory, and in the file on disk
        if target is not None:
            target.unlink(missing_ok=True)
        shown.forget_clip(ctx.settings.upload_dir, prof.id, clip.id)  # what the web app showed of it
        derived = lessons.forget_clip(ctx.data_dir, prof.id, clip.id)
        uploads.forget_copies(ctx.settings.upload_dir, {clip.sha256} | derived)  # copies handed to the browser too
        return {"clip_id": clip.id, "profile": prof.name, "lessons": len(derived),
                "rebuilt": {m: r.to_dict() for m, r in rebuilt.items()}}
