"""All settings in one place, read from the environment so Spaces, the CLI and tests agree."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"EMOWEB_{name}", default)


@dataclass(frozen=True)
class Settings:
    """Runtime settings; every field has an `EMOWEB_<NAME>` environment variable."""

    profile: str = field(default_factory=lambda: _env("PROFILE", "embedded"))
    device: str = field(default_factory=lambda: _env("DEVICE", "auto"))
    data_dir: Path = field(default_factory=lambda: Path(_env("DATA_DIR", str(Path.home() / ".emoweb"))))
    database_url: str = field(default_factory=lambda: _env("DATABASE_URL", ""))
    max_seconds: float = field(default_factory=lambda: float(_env("MAX_SECONDS", "60")))
    max_upload_mb: float = field(default_factory=lambda: float(_env("MAX_UPLOAD_MB", "200")))
    n_frames: int = field(default_factory=lambda: int(_env("N_FRAMES", "16")))
    threads: int = field(default_factory=lambda: int(_env("THREADS", "0")))  # 0: torch's default
    asr_beam: int = field(default_factory=lambda: int(_env("ASR_BEAM", "1")))
    feature_cache: Path = field(
        default_factory=lambda: Path(_env("FEATURE_CACHE", str(Path.home() / ".cache" / "emoweb" / "features")))
    )

    @property
    def upload_dir(self) -> Path:
        """Where the web server keeps uploads and recordings: inside the data dir, so a clip never
        sits in a shared system temp folder (GRADIO_TEMP_DIR, when set, wins)."""
        return Path(os.environ.get("GRADIO_TEMP_DIR") or self.data_dir / "uploads")

    @property
    def db_url(self) -> str:
        """SQLAlchemy URL: the explicit one, else a SQLite file in the data dir."""
        return self.database_url or f"sqlite:///{self.data_dir / 'emoweb.sqlite3'}"


def get_settings() -> Settings:
    """Fresh settings from the current environment (cheap; tests change the environment)."""
    return Settings()
