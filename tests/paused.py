"""Test-only launcher: the CLI or the app with a `CaregiverService` that stops at one named point of a
write, so a test can kill the process exactly there.

    python tests/paused.py STAGE SECONDS cli ARGS...   as `python -m emoweb ARGS...`
    python tests/paused.py STAGE SECONDS app           as `python app.py`

STAGE is one of the service's pause points (`emoweb.services.context.Pause`: ingest.written,
ingest.commit, rebuild.commit). There the process prints `marker(STAGE)` on stderr and sleeps SECONDS.
The product reads no environment variable for this: the pause is injected here.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
WAIT_S = 120.0  # long enough for any test to see the marker and kill the process


def marker(stage: str) -> str:
    """The line announced on stderr on reaching `stage`."""
    return f"paused at {stage}"


def command(stage: str, *rest: str, seconds: float = WAIT_S) -> list[str]:
    """The argv that runs `rest` ('cli', ARGS... or 'app') pausing at `stage` for `seconds`."""
    return [sys.executable, str(SCRIPT), stage, str(seconds), *rest]


def pause_at(stage: str, seconds: float):
    """A `Pause` that waits at `stage` only, after announcing it."""

    def pause(reached: str) -> None:
        if reached == stage:
            print(marker(stage), file=sys.stderr, flush=True)
            time.sleep(seconds)

    return pause


def _run(stage: str, seconds: float, what: str, args: list[str]) -> int:
    sys.path.insert(0, str(REPO))
    from emoweb.services import CaregiverService

    pause = pause_at(stage, seconds)
    if what == "cli":
        from emoweb.cli import main

        return main(args, make_service=lambda settings: CaregiverService(settings, pause=pause))
    import app  # sets the environment gradio reads, then builds the default app (unused here)
    from emoweb.ui import build_app
    from emoweb.ui.common import AppContext

    context = AppContext(app.settings, service=CaregiverService(app.settings, pause=pause))
    app.main(build_app(app.settings, context=context))
    return 0


if __name__ == "__main__":
    sys.exit(_run(sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]))
