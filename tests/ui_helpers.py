"""The app in a subprocess for the UI tests (browser and gradio_client): free localhost port, temp data
dir, bounded waits, one instance per test session, stopped at the end.

When no trained checkpoint is shipped yet for the embedded profile, the app is pointed (through
EMOWEB_CHECKPOINT_ROOT) at a randomly initialised EmoAsst checkpoint written to a temp dir with a card
saying so: the tests check the UI's plumbing, not the model's accuracy.
"""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

import paused

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 240  # importing torch + gradio on two busy cores
PREDICT_TIMEOUT_S = 600  # first prediction loads Whisper, MiniLM and FER, then encodes the clip
SCREENSHOTS = REPO / "tests" / "screenshots"


@dataclass
class RunningApp:
    url: str
    proc: subprocess.Popen
    log: Path
    data_dir: Path

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shipped_checkpoint(profile: str = "embedded") -> bool:
    from models import registry

    return any(all(p.is_file() for p in registry.checkpoint_paths(name, profile)) for name in registry.available())


def untrained_checkpoint_root(root: Path) -> Path:
    """A random-init EmoAsst checkpoint for the embedded profile under `root` (card: untrained)."""
    import torch

    from models import LABEL7, registry
    from models.backbones import PROFILES

    torch.manual_seed(0)
    model = registry.build("emoasst", PROFILES["embedded"].dims)
    card = {"labels": list(LABEL7), "untrained": True, "data": "none: random initialisation for the UI tests"}
    registry.save(model, "emoasst", "embedded", card, root)
    return root


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"the app did not answer on {url} within {timeout:.0f} s:\n{log.read_text(errors='replace')[-4000:]}")


def app_env(workdir: Path, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an app (or a `python -m emoweb` command) on `workdir`: its data dir is
    `workdir/data`, SQLite there, no login, quiet threads, and a checkpoint for every model."""
    env = dict(os.environ)
    env.update({
        "EMOWEB_DATA_DIR": str(workdir / "data"),
        "EMOWEB_FEATURE_CACHE": str(workdir / "features"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(workdir / "gradio"),
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONUNBUFFERED": "1",
    })
    env.setdefault("EMOWEB_THREADS", "2")
    env.pop("EMOWEB_AUTH", None)
    env.pop("EMOWEB_DATABASE_URL", None)
    if not shipped_checkpoint() and "EMOWEB_CHECKPOINT_ROOT" not in env:
        env["EMOWEB_CHECKPOINT_ROOT"] = str(untrained_checkpoint_root(workdir / "checkpoints"))
    env.update(extra_env or {})
    return env


def start_app(workdir: Path, extra_env: dict[str, str] | None = None, pause: str | None = None) -> RunningApp:
    """The app on a free port with its data in `workdir/data` (kept if it is already there). `pause`: a
    stage of the service's writes where it waits to be killed (`paused.py`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = app_env(workdir, {"EMOWEB_HOST": "127.0.0.1", "EMOWEB_PORT": str(port), **(extra_env or {})})
    log = workdir / "app.log"
    argv = paused.command(pause, "app") if pause else [sys.executable, str(REPO / "app.py")]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    app = RunningApp(url, proc, log, workdir / "data")
    try:
        wait_http(url, proc, START_TIMEOUT_S, log)
    except BaseException:
        stop_app(app)
        raise
    return app


def stop_app(app: RunningApp) -> None:
    """SIGTERM to the app's own process group (it was started in a new session), then SIGKILL."""
    if app.proc.poll() is None:
        try:
            os.killpg(app.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            app.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(app.proc.pid, signal.SIGKILL)
            app.proc.wait(timeout=10)


_SHARED: dict[str, RunningApp] = {}


def shared_app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> RunningApp:
    """One app per test session, shared by the browser and the client tests (each uses its own profile)."""
    app = _SHARED.get("app")
    if app is None or app.proc.poll() is not None:
        app = start_app(tmp_path_factory.mktemp("ui_app"))
        _SHARED["app"] = app

        def finish() -> None:
            stop_app(app)
            _SHARED.pop("app", None)

        request.addfinalizer(finish)  # the calling fixture is session-scoped: runs at the end of the session
    return app


# -- helpers of the load and fault tests ---------------------------------------------------------

def render_clips(out_dir: Path, n: int) -> list[Path]:
    """`n` distinct composite clips (~3.5 s each, different content hashes: one voice of tests/data each),
    rendered once into `out_dir`. A voice goes with the face photo of its label where tests/data has one,
    else the other face: these clips are uploads whose label no test reads."""
    from conftest import FACES, OTHER_FACE, VOICES
    from emoweb.learning import composite

    if n > len(VOICES):
        raise ValueError(f"at most {len(VOICES)} distinct clips")
    out = []
    for label, speech in list(VOICES.items())[:n]:
        target = out_dir / f"{label}.mp4"
        out.append(target if target.is_file() else composite.render(FACES.get(label, OTHER_FACE), speech, target))
    return out


def job_result(job, timeout: float):
    """A gradio_client job's outputs within `timeout` seconds (never hangs: cancelled on timeout)."""
    try:
        return job.result(timeout=timeout)
    except TimeoutError:
        job.cancel()
        raise


def profile_value(created) -> str:
    """The profile id from /create_profile's first output (a dropdown update: choices + value)."""
    first = created[0]
    return str(first["value"] if isinstance(first, dict) else first)


def refused_calls(profile: str, clip: str, label_file, audio) -> list[tuple[tuple, str]]:
    """Every endpoint that reads or changes a profile, aimed at `profile` (someone else's)."""
    return [
        ((profile, None), "/queue"),
        ((profile, clip), "/show_clip"),
        ((profile, clip, "anger", "", False), "/label"),
        ((profile, clip, ""), "/label_key_1"),
        ((profile, clip), "/undo"),
        ((profile,), "/rebuild_cache"),
        ((profile, "csv"), "/export_labels"),
        ((profile, label_file, False), "/import_labels"),
        ((profile, clip, True), "/delete_clip"),
        ((profile, True), "/delete_profile"),
        ((profile,), "/models_info"),
        (("profile's labelled clips", profile, None, None, "", 10), "/compare_set"),
        ((None, audio, None, profile), "/predict"),
    ]


def assert_refused(c, calls, match: str) -> None:
    for args, api_name in calls:
        with pytest.raises(Exception, match=match) as info:
            job_result(c.submit(*args, api_name=api_name), 120)
        assert "\n" not in str(info.value).strip(), f"{api_name}: not one line: {info.value}"


def rss_kb(pid: int) -> int:
    """Resident memory of one process (kB), from /proc (psutil is not a dependency)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def wait_for_line(path: Path, marker: str, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until a line containing `marker` appears in the log file `path` (a stage a test kills at)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if marker in text:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before {marker!r}:\n{text[-4000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"no {marker!r} within {timeout:.0f} s:\n{path.read_text(errors='replace')[-4000:] if path.exists() else ''}")


def kill_now(proc: subprocess.Popen) -> None:
    """SIGKILL the process group `proc` leads (started with start_new_session) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


DB_FILE = "emoweb.sqlite3"  # the SQLite file in a data dir (Settings.db_url without EMOWEB_DATABASE_URL)
CLIP_CHILDREN = ("clip_features", "predictions")  # every stored clip has both, written in its ingest transaction


def data_dir_problems(data_dir: Path) -> list[str]:
    """What is wrong with a data dir after a crash or a fault (empty when it is sound): SQLite's
    integrity and foreign-key checks, half-written clips (a row without features or predictions),
    temp files of an interrupted upload, media files no row names, rows whose media file is gone."""
    problems = []
    with sqlite3.connect(data_dir / DB_FILE, timeout=30) as db:
        integrity = [r[0] for r in db.execute("PRAGMA integrity_check")]
        if integrity != ["ok"]:
            problems.append(f"integrity_check: {integrity}")
        broken = db.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            problems.append(f"foreign_key_check: {broken}")
        for table in CLIP_CHILDREN:
            half = [r[0] for r in db.execute(f"SELECT id FROM clips WHERE id NOT IN (SELECT clip_id FROM {table})")]
            if half:
                problems.append(f"clips without {table}: {half}")
        rows = {r[0] for r in db.execute("SELECT media_path FROM clips")}
    media = data_dir / "media"
    files = {p.relative_to(data_dir).as_posix() for p in media.rglob("*") if p.is_file()} if media.is_dir() else set()
    temp = sorted(f for f in files if Path(f).name.startswith("."))
    if temp:
        problems.append(f"temp files left: {temp}")
    if files - rows - set(temp):
        problems.append(f"media files without a clip row: {sorted(files - rows - set(temp))}")
    if rows - files:
        problems.append(f"clip rows without their media file: {sorted(rows - files)}")
    return problems
