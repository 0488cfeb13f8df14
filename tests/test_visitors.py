"""Visitors without login, below the UI: which deployments are shared, where a Space keeps its data, owner
keys, the per-visitor limits and the expiry of idle visitors (real SQLite, no models needed)."""
from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from emoweb import config
from emoweb.config import Settings
from emoweb.errors import EmoWebError
from emoweb.services import CaregiverService
from emoweb.services.visitors import VISITOR, Visitors, privacy_notice, session_owner, visitor_owner

KEY = "k" * 22


@pytest.mark.parametrize(("env", "shared", "public"), [
    ({}, True, False),  # a caregiver's own machine
    ({"EMOWEB_HOST": "0.0.0.0"}, False, False),  # reachable from the network
    ({"SPACE_ID": "a/b"}, False, True),
    ({"SPACE_ID": "a/b", "EMOWEB_SHARED": "1"}, True, True),  # asked for explicitly
    ({"EMOWEB_HOST": "0.0.0.0", "EMOWEB_PUBLIC": "1"}, False, True),
    ({"EMOWEB_SHARED": "1", "EMOWEB_AUTH": "a:b"}, False, False),  # login: each caregiver their own
    ({"EMOWEB_SHARED": "0"}, False, False),
])
def test_which_deployments_are_one_shared_family(monkeypatch, env: dict, shared: bool, public: bool) -> None:
    for name in ("SPACE_ID", "EMOWEB_HOST", "GRADIO_SERVER_NAME", "EMOWEB_SHARED", "EMOWEB_PUBLIC", "EMOWEB_AUTH"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = config.get_settings()
    assert (settings.shared, settings.public) == (shared, public)
    assert settings.visitors == (not shared and "EMOWEB_AUTH" not in env)  # each browser owns its data


def test_a_space_with_persistent_storage_keeps_its_data_there(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EMOWEB_DATA_DIR", raising=False)
    monkeypatch.setattr(config, "SPACES_STORAGE", tmp_path / "data")
    monkeypatch.setenv("SPACE_ID", "a/b")
    assert config.get_settings().data_dir == Path.home() / ".emoweb"  # no persistent storage: the default
    (tmp_path / "data").mkdir()
    assert config.get_settings().data_dir == tmp_path / "data" / "emoweb"
    monkeypatch.setenv("EMOWEB_DATA_DIR", str(tmp_path / "mine"))
    assert config.get_settings().data_dir == tmp_path / "mine"  # an explicit folder wins
    monkeypatch.delenv("EMOWEB_DATA_DIR")
    monkeypatch.delenv("SPACE_ID")
    assert config.get_settings().data_dir == Path.home() / ".emoweb"


def test_owner_keys_are_long_tokens_stored_only_as_a_hash() -> None:
    owner = visitor_owner(KEY)
    assert owner.startswith(VISITOR) and KEY not in owner and visitor_owner(KEY) == owner
    assert visitor_owner("j" * 22) != owner
    for bad in ("", "short", "k" * 21, "k" * 129, KEY + "/", KEY + " x"):
        with pytest.raises(EmoWebError, match="owner key must be"):
            visitor_owner(bad)
    assert session_owner("abc") != session_owner("abd") and session_owner("abc").startswith(VISITOR)


@pytest.fixture()
def service(tmp_path: Path):
    svc = CaregiverService(Settings(data_dir=tmp_path / "data", database_url="", visitor_max_clips=2, visitor_max_mb=0.5))
    yield svc
    svc.close()


def add_clip(service: CaregiverService, profile_id: int, name: str, size: int) -> None:
    """A clip row with a media file of `size` bytes (no model needed to count a visitor's clips)."""
    relative = f"media/{profile_id}/{name}.wav"
    (service.data_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    (service.data_dir / relative).write_bytes(b"\0" * size)
    service.repo.add_clip(profile_id, name.ljust(64, "0"), relative, "audio", "upload", f"{name}.wav", 1.0)


def test_limits_refuse_a_clip_in_one_line(service: CaregiverService, tmp_path: Path) -> None:
    visitors = Visitors(service, service.settings)
    owner = visitor_owner(KEY)
    profile = service.create_profile("mine", owner=owner)
    small, big = tmp_path / "small.wav", tmp_path / "big.wav"
    small.write_bytes(b"\1" * 1000)
    big.write_bytes(b"\1" * 600_000)
    visitors.check_room(owner, profile.id, small)  # room for it
    with pytest.raises(EmoWebError, match=r"at most 0.5 MB of clips per visitor \(0.0 MB stored, this one 0.6 MB\)") as info:
        visitors.check_room(owner, profile.id, big)
    assert "\n" not in str(info.value)
    add_clip(service, profile.id, "a", 1000)
    add_clip(service, profile.id, "b", 1000)
    assert service.owner_usage(owner) == (2, 2000)
    with pytest.raises(EmoWebError, match="at most 2 clips per visitor") as info:
        visitors.check_room(owner, profile.id, small)
    assert "\n" not in str(info.value)
    other = visitor_owner("j" * 22)  # the limits are per visitor
    visitors.check_room(other, service.create_profile("mine", owner=other).id, small)


def test_idle_visitors_are_deleted_and_no_one_else(service: CaregiverService) -> None:
    visitors = Visitors(service, service.settings)
    idle, active = visitor_owner(KEY), visitor_owner("j" * 22)
    ids = {who: service.create_profile("home", owner=owner).id
           for who, owner in (("idle", idle), ("active", active), ("caregiver", "alice"), ("shared", None))}
    add_clip(service, ids["idle"], "c", 100)
    media = service.data_dir / "media" / str(ids["idle"])
    old = (datetime.now(timezone.utc) - timedelta(hours=25)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(service.data_dir / "emoweb.sqlite3") as db:
        db.execute("UPDATE profiles SET last_active = ?", (old,))  # everyone idle for 25 h ...
    visitors.touch(active)  # ... except one visitor, back now
    assert visitors.expire() == [idle]
    assert sorted(p.id for p in service.list_profiles()) == sorted(ids[w] for w in ("active", "caregiver", "shared"))
    assert not media.exists()
    with sqlite3.connect(service.data_dir / "emoweb.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM clips").fetchone()[0] == 0


def test_the_privacy_notice_says_what_where_and_how_long() -> None:
    text = privacy_notice(Settings(visitor_ttl_hours=6, visitor_max_clips=20, visitor_max_mb=100))
    assert "kept on this server only" in text and "deleted 6 hours after your last visit" in text
    assert "20 clips" in text and "100 MB" in text
