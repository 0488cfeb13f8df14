"""Issue 9, faults: a process killed (SIGKILL) mid-ingest or mid-rebuild, and a full disk during ingest,
on a real SQLite file with real clips and models.

Every test starts from a copy of one seeded data dir (profile 'faults': three clips ingested, labelled,
a cache rebuilt, then one label changed so a new rebuild would differ). After each fault the data dir
must be sound (`data_dir_problems`: integrity, foreign keys, no half-written clip, no temp file, no
media file without a row and no row without its file), the previous cache must stay active, and the
interrupted action must succeed when tried again.

The kill points are exact: the process runs through `tests/paused.py`, which injects a pause at a named
stage of the service's write; it announces it, and the test kills there. A full disk is a small tmpfs (mounting needs root) or, where
mounting is not permitted (or EMOWEB_TEST_NO_TMPFS=1), a file-size limit (RLIMIT_FSIZE) on a
`python -m emoweb ingest`.
"""
from __future__ import annotations

import dataclasses
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import paused
from ui_helpers import (
    DB_FILE,
    REPO,
    app_env,
    data_dir_problems,
    job_result,
    kill_now,
    render_clips,
    start_app,
    stop_app,
    wait_for_line,
)

pytestmark = pytest.mark.slow

PROFILE = "faults"
SEED_LABELS = ("joy", "sadness", "anger")
STAGE_TIMEOUT_S = 240  # a CLI ingest imports torch and loads every model first
DISK_FULL = "not enough disk space in the data folder"


@dataclasses.dataclass(frozen=True)
class Seed:
    data: Path
    profile_id: int
    clip_ids: list[int]
    snapshots: dict[str, int]  # model -> active snapshot id


def open_service(data: Path, predictor):
    """A CaregiverService on `data` (SQLite in it), as a restarted process would open it."""
    from emoweb.config import get_settings
    from emoweb.services import CaregiverService

    settings = dataclasses.replace(get_settings(), data_dir=data, database_url="")
    return CaregiverService(settings, predictor=predictor)


def sql(data: Path, query: str) -> list[tuple]:
    with sqlite3.connect(data / DB_FILE, timeout=30) as db:
        return db.execute(query).fetchall()


def active_snapshots(data: Path) -> dict[str, int]:
    return dict(sql(data, "SELECT model, id FROM cache_snapshots WHERE active"))


def copy_seed(seed: Seed, workdir: Path) -> Path:
    """A fresh copy of the seeded data dir at `workdir/data` (where `app_env` and `start_app` put it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(seed.data, workdir / "data"))


def cli(workdir: Path, *args: str, env: dict[str, str] | None = None, preexec: Callable[[], None] | None = None,
        log: Path | None = None, pause: str | None = None) -> subprocess.Popen:
    """`python -m emoweb ARGS` on `workdir/data` in its own session; output to `log`, else piped.
    `pause`: a stage of the service where it waits (`paused.py`) for the test to kill it."""
    out = open(log, "wb") if log else subprocess.PIPE
    argv = paused.command(pause, "cli", *args) if pause else [sys.executable, "-m", "emoweb", *args]
    try:
        return subprocess.Popen(argv, cwd=REPO, env=app_env(workdir, env),
                                stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE,
                                start_new_session=True, preexec_fn=preexec)
    finally:
        if log:
            out.close()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return render_clips(tmp_path_factory.mktemp("fault_clips"), 4)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory):
    """One Predictor (backbones + models, loaded on first use) for every in-process service here, with
    the checkpoints the CLI and the app get from `app_env`."""
    from emoweb.config import get_settings
    from emoweb.pipeline.inference import Predictor

    return Predictor(get_settings(), checkpoint_root=app_env(tmp_path_factory.mktemp("faults_env")).get("EMOWEB_CHECKPOINT_ROOT"))


@pytest.fixture(scope="module")
def seeded(clips: list[Path], predictor, tmp_path_factory: pytest.TempPathFactory) -> Seed:
    data = tmp_path_factory.mktemp("faults_seed") / "data"
    service = open_service(data, predictor)
    try:
        profile = service.create_profile(PROFILE)
        ids = [service.ingest(c, PROFILE).clip.id for c in clips[:3]]
        for clip_id, label in zip(ids, SEED_LABELS):
            service.record_correction(clip_id, label, profile=PROFILE)
        built = service.rebuild_cache(PROFILE)
        service.record_correction(ids[0], "neutral", profile=PROFILE)  # a new rebuild would differ from this one
    finally:
        service.close()  # checkpoints the WAL: the copies are one file
    assert data_dir_problems(data) == []
    return Seed(data, profile.id, ids, {m: r.snapshot_id for m, r in built.items()})


@pytest.mark.parametrize("stage", ["ingest.commit", "ingest.written"])
def test_ingest_killed_mid_way_leaves_no_trace(stage: str, seeded: Seed, clips: list[Path], predictor, tmp_path: Path) -> None:
    """SIGKILL with the upload in its temp file ('written'), or renamed into place inside the uncommitted
    transaction ('commit'): after a restart there is no temp file, no orphan media file and no half row,
    and the same upload goes through."""
    data = copy_seed(seeded, tmp_path)
    log = tmp_path / "ingest.log"
    proc = cli(tmp_path, "ingest", str(clips[3]), "--profile", PROFILE, log=log, pause=stage)
    try:
        wait_for_line(log, paused.marker(stage), proc, STAGE_TIMEOUT_S)
        left = sorted(p.name for p in (data / "media").rglob("*") if p.is_file())
    finally:
        kill_now(proc)
    assert proc.returncode == -signal.SIGKILL
    temp = [n for n in left if n.endswith(".part")]
    assert temp if stage == "ingest.written" else len(left) == len(seeded.clip_ids) + 1 and not temp, left  # killed where meant

    service = open_service(data, predictor)  # the restart
    try:
        assert data_dir_problems(data) == []
        assert [c.id for c in service.list_clips(PROFILE)] == seeded.clip_ids
        again = service.ingest(clips[3], PROFILE)
        assert again.new and (data / again.clip.media_path).is_file() and set(again.predictions) == set(seeded.snapshots)
    finally:
        service.close()
    assert data_dir_problems(data) == []


def test_app_killed_during_a_rebuild_keeps_the_previous_cache(seeded: Seed, tmp_path: Path) -> None:
    """The app (its whole process group) is killed inside the rebuild's transaction; after a restart
    the database is sound, the previous snapshots are the active ones and answers use them, and a
    rebuild through the API then works."""
    from gradio_client import Client

    data = copy_seed(seeded, tmp_path)
    profile, clip_id = str(seeded.profile_id), str(seeded.clip_ids[0])
    app = start_app(tmp_path, pause="rebuild.commit")
    try:
        client = Client(app.url, verbose=False, download_files=False)
        client.submit(profile, api_name="/rebuild_cache")
        wait_for_line(app.log, paused.marker("rebuild.commit"), app.proc, STAGE_TIMEOUT_S)
        kill_now(app.proc)
    finally:
        stop_app(app)
    assert app.proc.returncode == -signal.SIGKILL
    assert data_dir_problems(data) == []
    assert active_snapshots(data) == seeded.snapshots

    app = start_app(tmp_path)  # the restart
    try:
        client = Client(app.url, verbose=False, download_files=False)
        answers = job_result(client.submit(profile, clip_id, api_name="/show_clip"), 120)[3]
        used = sorted(int(s) for s in re.findall(r"\(with cache snapshot (\d+)\)", answers))
        assert used == sorted(seeded.snapshots.values()), answers  # every model, on its previous snapshot
        rebuilt = job_result(client.submit(profile, api_name="/rebuild_cache"), 300)[0]
        assert "Rebuilt" in rebuilt, rebuilt
    finally:
        stop_app(app)
    now = active_snapshots(data)
    assert set(now) == set(seeded.snapshots) and not set(now.values()) & set(seeded.snapshots.values())
    assert data_dir_problems(data) == []


# -- a full disk --------------------------------------------------------------------------------

TMPFS_MB = 16
NO_TMPFS_ENV = "EMOWEB_TEST_NO_TMPFS"  # "1": use the file-size-limit fallback even where a tmpfs can be mounted


def mount_tmpfs(path: Path, size_mb: int) -> str | None:
    """Mount a tmpfs of `size_mb` at `path`; None when done, else why not (no root, no CAP_SYS_ADMIN)."""
    path.mkdir(parents=True)
    if os.environ.get(NO_TMPFS_ENV) == "1":
        return f"{NO_TMPFS_ENV}=1"
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "emoweb-test", str(path)],
                                 capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if mounted.returncode == 0 else (mounted.stderr.strip() or f"mount exited with {mounted.returncode}")


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)  # still busy: detach it now, free it later


def fill(mount: Path, leave: int) -> Path:
    """A filler file on the mount that leaves about `leave` bytes free."""
    st = os.statvfs(mount)
    filler = mount / "filler"
    remaining = st.f_bavail * st.f_frsize - leave
    block = b"\0" * (1 << 20)
    with open(filler, "wb") as fh:
        while remaining > 0:
            remaining -= fh.write(block[: min(len(block), remaining)])
    return filler


@pytest.mark.parametrize("full", ["media", "database"])
def test_full_disk_during_ingest(full: str, seeded: Seed, clips: list[Path], predictor, tmp_path: Path) -> None:
    """The data dir on a tmpfs with no room for the upload ('media') or with room for the upload but not
    for its database rows ('database'): one clear line, nothing half-written, and the upload goes through
    once there is room. Where no tmpfs can be mounted, `full_under_a_file_size_limit` stands in."""
    from sqlalchemy.exc import DBAPIError

    from emoweb.errors import EmoWebError

    mount = tmp_path / "mnt"
    why_not = mount_tmpfs(mount, TMPFS_MB)
    if why_not is not None:
        if full == "database":
            pytest.skip(f"no tmpfs ({why_not}): a file-size limit cannot leave room for the upload but not the rows")
        return full_under_a_file_size_limit(seeded, clips, predictor, tmp_path)
    try:
        data = copy_seed(seeded, mount)
        service = open_service(data, predictor)
        try:
            service.list_clips(PROFILE)  # the database connection (and its WAL) is open before the disk fills
            filler = fill(mount, 0 if full == "media" else clips[3].stat().st_size + 8192)
            with pytest.raises(EmoWebError) as refused:
                service.ingest(clips[3], PROFILE)
            message = str(refused.value)
            assert message.startswith(DISK_FULL) and str(data) in message and "\n" not in message, message
            refusal = refused.value.__context__  # what the disk refused: the upload's copy, or the commit
            assert isinstance(refusal, OSError if full == "media" else DBAPIError), repr(refusal)
            assert data_dir_problems(data) == []
            assert [c.id for c in service.list_clips(PROFILE)] == seeded.clip_ids
            filler.unlink()
            assert service.ingest(clips[3], PROFILE).new
            assert data_dir_problems(data) == []
        finally:
            service.close()
    finally:
        unmount(mount)


def limit_file_size(max_bytes: int) -> Callable[[], None]:
    """preexec_fn: writes past `max_bytes` in any file fail with EFBIG (SIGXFSZ ignored instead of fatal)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return apply


def padded(clip: Path, out: Path, size: int) -> Path:
    """The clip with an MP4 'free' box appended (padding every decoder skips) up to `size` bytes."""
    data = clip.read_bytes()
    pad = size - len(data)
    out.write_bytes(data + pad.to_bytes(4, "big") + b"free" + bytes(pad - 8))
    return out


def full_under_a_file_size_limit(seeded: Seed, clips: list[Path], predictor, tmp_path: Path) -> None:
    """The fallback where no tmpfs can be mounted (CI without root): `python -m emoweb ingest` under a
    file-size limit (above the database's size, below the upload's) fails with one clear line and exit
    status 2, leaves the data dir sound, and the upload goes through without the limit."""
    data = copy_seed(seeded, tmp_path)
    limit = 2 * (data / DB_FILE).stat().st_size + (1 << 20)  # the database's own writes stay well under it
    upload = padded(clips[3], tmp_path / "padded.mp4", 2 * limit)
    proc = cli(tmp_path, "ingest", str(upload), "--profile", PROFILE, preexec=limit_file_size(limit))
    try:
        _, err = proc.communicate(timeout=STAGE_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            kill_now(proc)
    stderr = err.decode(errors="replace")
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and lines and lines[-1].startswith(f"error: {DISK_FULL}"), stderr
    assert "Traceback" not in stderr
    assert data_dir_problems(data) == []
    service = open_service(data, predictor)
    try:
        assert [c.id for c in service.list_clips(PROFILE)] == seeded.clip_ids
        assert service.ingest(upload, PROFILE).new
    finally:
        service.close()
    assert data_dir_problems(data) == []
