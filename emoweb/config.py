"""All settings in one place, read from the environment so Spaces, the CLI and tests agree."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SPACES_STORAGE = Path("/data")  # a Hugging Face Space's persistent storage, when the Space has it
EPOCH_ROWS_PER_MODALITY = 6000  # rows per modality in one training epoch (balanced draws; emoweb/learning/training.py)
DEV_ROWS_PER_GROUP = 60  # dev rows kept per (corpus, label) for early stopping (calibration reads them all)
DEV_FRACTION = 0.15  # share of training speakers held out for early stopping (`train --dev-fraction`)
BUILT_CLIPS_IN_CORPUS = "corpus"  # `train --built-clips`: partial-expression clips balanced among their photos' corpus
BUILT_CLIPS_OWN_GROUPS = "own"  # ... or as (corpus, label) groups of their own (the session-9 recipe)


@dataclass(frozen=True)
class TextTuningRecipe:
    """`tune-text`: how the text backbone's emotion classifier is tuned (emoweb/learning/text_tuning.py)."""

    tuned_layers: int = 2  # MiniLM's top layers tuned (of 6): 4 scored +0.017 but weigh 14 MB, over Spaces' 10-MB file limit
    epochs: int = 2
    lr: float = 1e-4  # tuned layers (one-cycle schedule, 10% warm-up)
    head_lr: float = 1e-3  # the new linear classifier
    batch_size: int = 32
    rows_per_manifest: int = 12000
    seed: int = 0
    dev_fraction: float = DEV_FRACTION


def _env(name: str, default: str) -> str:
    return os.environ.get(f"EMOWEB_{name}", default)


def _number(name: str, default: str, kind: type = float) -> float | int:
    """EMOWEB_<name> as a number; a value that is none is refused in one line naming the setting."""
    from emoweb.errors import SettingError

    value = _env(name, default)
    try:
        return kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise SettingError(f"EMOWEB_{name}={value!r} is not {what}") from None


def _flag(name: str) -> bool | None:
    """EMOWEB_<name> as a yes/no; None when unset or empty."""
    value = _env(name, "").strip().lower()
    return None if not value else value in ("1", "true", "yes", "on")


def _space_id() -> str:
    return os.environ.get("SPACE_ID", "").strip()  # set by Hugging Face Spaces in every Space


def _default_data_dir() -> str:
    """~/.emoweb; on a Space with persistent storage, /data/emoweb (the rest of a Space's disk is
    wiped at every restart)."""
    if _space_id() and SPACES_STORAGE.is_dir():
        return str(SPACES_STORAGE / "emoweb")
    return str(Path.home() / ".emoweb")


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


BACKBONE_SETS = ("embedded", "paper")  # models.backbones.PROFILES's names (a test keeps them equal)


@dataclass(frozen=True)
class Settings:
    """Runtime settings; every field has an `EMOWEB_<NAME>` environment variable, except `space_id`
    (Spaces' own SPACE_ID) and the `_flag` ones (EMOWEB_SHARED, EMOWEB_PUBLIC; unset: the default)."""

    profile: str = field(default_factory=lambda: _env("PROFILE", "embedded"))
    device: str = field(default_factory=lambda: _env("DEVICE", "auto"))
    data_dir: Path = field(default_factory=lambda: Path(_env("DATA_DIR", "") or _default_data_dir()))
    database_url: str = field(default_factory=lambda: _env("DATABASE_URL", ""))
    max_seconds: float = field(default_factory=lambda: _number("MAX_SECONDS", "60"))
    max_upload_mb: float = field(default_factory=lambda: _number("MAX_UPLOAD_MB", "200"))
    n_frames: int = field(default_factory=lambda: _number("N_FRAMES", "16", int))
    threads: int = field(default_factory=lambda: _number("THREADS", "0", int))  # 0: torch's default
    asr_beam: int = field(default_factory=lambda: _number("ASR_BEAM", "1", int))
    # how long the Predict tab keeps a session's last analysed clip (frames, audio, features) in memory for
    # its "Whose face" selector; never on disk
    analysed_minutes: float = field(default_factory=lambda: _number("ANALYSED_MINUTES", "30"))
    feature_cache: Path = field(
        default_factory=lambda: Path(_env("FEATURE_CACHE", str(Path.home() / ".cache" / "emoweb" / "features")))
    )
    # where the web app listens (EMOWEB_HOST / EMOWEB_PORT; else what Spaces sets in GRADIO_SERVER_*)
    host: str = field(default_factory=lambda: _env("HOST", "") or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1")
    port: int = field(default_factory=lambda: int(_env("PORT", "") or os.environ.get("GRADIO_SERVER_PORT") or 7860))
    auth: str = field(default_factory=lambda: _env("AUTH", ""))  # 'user1:pass1,user2:pass2': login on
    space_id: str = field(default_factory=_space_id)
    # Without login, every browser (and API client) has its own profiles unless the deployment asks
    # for one shared family (EMOWEB_SHARED=1); by default shared only on a loopback host outside Spaces.
    shared_flag: bool | None = field(default_factory=lambda: _flag("SHARED"))
    public_flag: bool | None = field(default_factory=lambda: _flag("PUBLIC"))
    # a public demo's limits per visitor, and how long a visitor's data outlives their last visit
    visitor_max_clips: int = field(default_factory=lambda: _number("VISITOR_MAX_CLIPS", "50", int))
    visitor_max_mb: float = field(default_factory=lambda: _number("VISITOR_MAX_MB", "500"))
    visitor_ttl_hours: float = field(default_factory=lambda: _number("VISITOR_TTL_HOURS", "24"))

    @property
    def shared(self) -> bool:
        """One shared family (everyone sees every profile): only without login, and only when asked
        for or when the app listens on loopback outside Spaces."""
        if self.auth:
            return False
        if self.shared_flag is not None:
            return self.shared_flag
        return not self.space_id and is_loopback(self.host)

    @property
    def visitors(self) -> bool:
        """Whether each browser (or API client) owns its data: no login, and not one shared family."""
        return not self.auth and not self.shared

    @property
    def public(self) -> bool:
        """A public demo (a Space, or EMOWEB_PUBLIC=1): visitor limits, expiry, privacy notice."""
        return self.public_flag if self.public_flag is not None else bool(self.space_id)

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
