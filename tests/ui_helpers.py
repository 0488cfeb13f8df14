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
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

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


def start_app(workdir: Path, extra_env: dict[str, str] | None = None) -> RunningApp:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ)
    env.update({
        "EMOWEB_DATA_DIR": str(workdir / "data"),
        "EMOWEB_FEATURE_CACHE": str(workdir / "features"),
        "EMOWEB_HOST": "127.0.0.1",
        "EMOWEB_PORT": str(port),
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
    log = workdir / "app.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
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
