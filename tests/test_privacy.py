"""Privacy: the embedded profile predicts with every socket blocked (nothing can leave the machine)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

BLOCKED_RUN = textwrap.dedent(
    """
    import json, socket, sys

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network blocked by test")

    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse

    from emoweb.pipeline.inference import Predictor

    result = Predictor().predict(sys.argv[1], "all").to_summary()
    print(json.dumps({"attempts": attempts, "models": sorted(result["models"]), "transcript": result["clip"]["transcript"]["text"]}))
    """
)


def test_embedded_prediction_with_network_blocked(composite_clip: Path, tmp_path: Path) -> None:
    """Sockets are blocked in Python only; a native uploader (ONNX Runtime's telemetry, behind the VAD)
    would pass them, so its opt-out is checked by what it leaves: a session file in TMPDIR."""
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "EMOWEB_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE",
           "EMOWEB_DATA_DIR": str(tmp_path), "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "TMPDIR": str(private_tmp)}
    proc = subprocess.run([sys.executable, "-c", BLOCKED_RUN, str(composite_clip)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["attempts"] == [], f"network connections attempted: {out['attempts']}"
    assert out["models"], "no model ran"
    assert "tomorrow" in out["transcript"].lower()
    assert not list(private_tmp.rglob("*.ses")), "ONNX Runtime's telemetry session file: its opt-out was not set in time"


def test_the_data_folder_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """Clips, names and notes of a child: the data folder is 0700 whatever the umask (the database was 0644 in a
    0755 folder, readable by every user of a shared machine). An existing EmoWeb folder is tightened; a folder
    the data was pointed into that holds other things is left as it is."""
    import dataclasses
    import os
    import stat

    from emoweb.config import get_settings
    from emoweb.services import CaregiverService

    def open_service(folder: Path) -> None:
        CaregiverService(dataclasses.replace(get_settings(), data_dir=folder, database_url="")).close()

    old_umask = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh" / "emoweb"
        open_service(fresh)
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o700 and (fresh / "emoweb.sqlite3").is_file()
        earlier = tmp_path / "earlier"  # made by an EmoWeb before this rule
        (earlier / "media").mkdir(parents=True)
        earlier.chmod(0o755)
        open_service(earlier)
        assert stat.S_IMODE(earlier.stat().st_mode) == 0o700
        shared = tmp_path / "shared"  # someone's folder with other things in it
        (shared / "photos").mkdir(parents=True)
        shared.chmod(0o755)
        open_service(shared)
        assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    finally:
        os.umask(old_umask)
