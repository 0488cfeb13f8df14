"""storage/ against real databases: a SQLite file always, PostgreSQL when EMOWEB_TEST_PG_URL is set.

Each PostgreSQL test runs in a fresh schema of that database (search_path), dropped afterwards,
so the tests need only the CREATE privilege there, not CREATEDB.
"""
from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import timezone
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from storage import Invalid, NotFound, Repository, make_engine, make_session_factory, upgrade
from storage.db import MIGRATIONS, alembic_config
from storage.schema import Base, CacheSnapshot, Clip, Correction

PG_URL = os.environ.get("EMOWEB_TEST_PG_URL", "")
BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not PG_URL, reason="PostgreSQL not configured: set EMOWEB_TEST_PG_URL=postgresql+psycopg://..."
        ),
    ),
]
TABLES = {"profiles", "clips", "clip_features", "clip_senses", "predictions", "corrections", "cache_snapshots"}
LABELS = ["happy", "sad", "angry", "neutral"]


def sha(text_: str) -> str:
    return hashlib.sha256(text_.encode()).hexdigest()


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """URL of an empty database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'emoweb.sqlite3'}"
        return
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(PG_URL)
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        url_ = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url_.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'emoweb.sqlite3'}"


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def repo(engine: Engine) -> Repository:
    return Repository(make_session_factory(engine))


def count(engine: Engine, table: str, where: str = "") -> int:
    with engine.connect() as connection:
        return connection.execute(text(f"SELECT count(*) FROM {table} {where}")).scalar_one()


def add_clip(repo: Repository, profile: str, name: str) -> Clip:
    clip, _ = repo.add_clip(profile, sha(f"{profile}/{name}"), f"media/{profile}/{name}.mp4", "video")
    return clip


# -- schema and migrations ------------------------------------------------------------------


def test_upgrade_brings_an_empty_database_to_head(url: str) -> None:
    engine = make_engine(url)
    assert not TABLES & set(inspect(engine).get_table_names())
    upgrade(engine)
    upgrade(engine)  # second start: a no-op
    assert TABLES | {"alembic_version"} <= set(inspect(engine).get_table_names())
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
        # the hand-written migration creates exactly what storage.schema declares
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_upgrade_keeps_the_rows_of_a_rebuilt_table(tmp_path: Path) -> None:
    """0002 rebuilds `profiles` on SQLite: its clips and caches (ON DELETE CASCADE) must survive."""
    engine = make_engine(tmp_path / "old.sqlite3")
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0001")
        connection.exec_driver_sql("INSERT INTO profiles (name, owner, label_set, created) VALUES ('Anna', NULL, '[]', '2025-01-02')")
        connection.exec_driver_sql("INSERT INTO clips (profile_id, sha256, media_path, original_name, kind, source, created) "
                                   "VALUES (1, 'ab', 'media/1/ab.mp4', 'a.mp4', 'video', 'upload', '2025-01-02')")
    upgrade(engine)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM clips").scalar() == 1
        assert connection.exec_driver_sql("SELECT last_active = created FROM profiles").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # back on for the app
    engine.dispose()


def test_an_id_is_never_given_again(repo: Repository) -> None:
    """The newest profile, clip and correction deleted: the next ones get new ids, so a page or command still
    holding the old id finds nothing instead of reaching someone else's row."""
    repo.create_profile("Anna", LABELS)
    kept, newest = add_clip(repo, "Anna", "a"), add_clip(repo, "Anna", "b")
    old = repo.add_correction(newest.id, "happy")
    repo.delete_clip(newest.id)
    again = add_clip(repo, "Anna", "c")
    assert again.id > newest.id > kept.id
    assert repo.add_correction(again.id, "sad").id > old.id
    with pytest.raises(NotFound, match=f"no clip {newest.id}"):
        repo.add_correction(newest.id, "sad")
    gone = repo.create_profile("Ben", LABELS)
    repo.delete_profile(gone.id)
    assert repo.create_profile("Cleo", LABELS).id > gone.id


def test_upgrade_from_0003_keeps_every_row_and_index(tmp_path: Path) -> None:
    """0004 rebuilds four tables on SQLite: rows, children (no cascade) and the expression and partial
    indexes survive, and the newest id is not given again afterwards."""
    engine = make_engine(tmp_path / "old.sqlite3")
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0003")
        run = connection.exec_driver_sql
        run("INSERT INTO profiles (name, owner, label_set, created, last_active) VALUES ('Anna', NULL, '[]', '2025-01-02', '2025-01-02')")
        for i in (1, 2):
            run("INSERT INTO clips (profile_id, sha256, media_path, original_name, kind, source, created) "
                f"VALUES (1, 's{i}', 'media/1/{i}.mp4', '', 'video', 'upload', '2025-01-02')")
            run(f"INSERT INTO corrections (clip_id, label, annotator, note, created) VALUES ({i}, 'happy', '', '', '2025-01-02')")
        run("INSERT INTO cache_snapshots (profile_id, model, built_at, n_per_label, hyper, metrics, labels, payload, active) "
            "VALUES (1, 'emoasst', '2025-01-02', '{}', '{}', '{}', '[]', x'00', 1)")
    upgrade(engine)
    with engine.connect() as connection:
        run = connection.exec_driver_sql
        assert [run(f"SELECT count(*) FROM {t}").scalar() for t in ("profiles", "clips", "corrections", "cache_snapshots")] == [1, 2, 2, 1]
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    repo = Repository(make_session_factory(engine))
    with pytest.raises(Invalid, match="already exists"):
        repo.create_profile("Anna")  # the expression index is back
    assert repo.get_clip(1).notes == []  # 0005: clips stored before have no notes
    repo.delete_clip(2)
    assert add_clip(repo, "Anna", "new").id == 3
    engine.dispose()


def test_alembic_config_needs_no_ini_file(engine: Engine) -> None:
    with engine.connect() as connection:
        config = alembic_config(connection)
    assert config.config_file_name is None
    assert config.get_main_option("script_location") == str(MIGRATIONS)


def test_concurrent_first_starts_migrate_once(url: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            upgrade(url)
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    engine = make_engine(url)
    assert count(engine, "alembic_version") == 1
    engine.dispose()


PRAGMAS = ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")


def test_sqlite_pragmas_on_every_connection(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url, pool_size=2)
    upgrade(engine)
    with engine.connect() as first, engine.connect() as second:
        for connection in (first, second):
            values = [connection.exec_driver_sql(f"PRAGMA {name}").scalar() for name in PRAGMAS]
            assert values == ["wal", 1, 10000, 1]  # synchronous 1 = NORMAL
    engine.dispose()


def test_a_bare_path_means_a_sqlite_file(tmp_path) -> None:
    path = tmp_path / "sub" / "dir" / "db.sqlite3"
    engine = make_engine(path)
    upgrade(engine)
    assert engine.dialect.name == "sqlite" and path.is_file()
    engine.dispose()


# -- profiles and clips ---------------------------------------------------------------------


def test_profiles_round_trip(repo: Repository) -> None:
    anna = repo.create_profile("  Anna ", LABELS, owner="mum")
    repo.create_profile("Classroom", ["calm"])
    assert anna.name == "Anna" and anna.owner == "mum" and anna.label_set == LABELS
    assert anna.created.tzinfo == timezone.utc
    assert repo.get_profile(anna.id).name == repo.get_profile("Anna").name == "Anna"
    assert [p.name for p in repo.list_profiles()] == ["Anna", "Classroom"]
    assert [p.name for p in repo.list_profiles(owner="mum")] == ["Anna"]
    with pytest.raises(Invalid, match="already exists"):
        repo.create_profile("Anna", owner="mum")
    with pytest.raises(Invalid, match="already exists"):
        repo.create_profile("Classroom")  # profiles without an owner count as one owner
    # names are unique per owner only: another owner's "Anna" neither clashes nor shows
    other = repo.create_profile("Anna", owner="visitor:b")
    assert other.id != anna.id and [p.id for p in repo.list_profiles(owner="visitor:b")] == [other.id]
    with pytest.raises(Invalid, match="several profiles are named"):
        repo.get_profile("Anna")
    with pytest.raises(Invalid, match="empty"):
        repo.create_profile("   ")
    with pytest.raises(Invalid, match="duplicates"):
        repo.create_profile("Bo", ["sad", "sad"])
    with pytest.raises(NotFound):
        repo.get_profile("nobody")
    with pytest.raises(NotFound):
        repo.get_profile(9999)


def test_clips_round_trip_and_reupload_is_recognised(repo: Repository) -> None:
    repo.create_profile("Anna", LABELS)
    repo.create_profile("Bo", LABELS)
    digest = sha("clip")
    clip, new = repo.add_clip("Anna", digest.upper(), "media/a.mp4", "video", "record", "birthday.mp4", 3.5)
    assert new
    assert (clip.sha256, clip.media_path, clip.kind, clip.source) == (digest, "media/a.mp4", "video", "record")
    assert (clip.original_name, clip.duration) == ("birthday.mp4", 3.5)
    again, new = repo.add_clip("Anna", digest, "media/other.mp4", "video")
    assert not new and again.id == clip.id and again.media_path == "media/a.mp4"
    other, new = repo.add_clip("Bo", digest, "media/b.mp4", "video")
    assert new and other.id != clip.id
    assert repo.get_clip(clip.id).original_name == "birthday.mp4"
    assert [c.id for c in repo.list_clips("Anna")] == [clip.id]
    for bad in [
        dict(sha256="xyz"),
        dict(media_path="/etc/passwd"),
        dict(media_path="../up.mp4"),
        dict(media_path=""),
        dict(kind="text"),
        dict(source="web"),
    ]:
        args = dict(profile="Anna", sha256=sha("x"), media_path="m/x.mp4", kind="audio") | bad
        with pytest.raises(Invalid):
            repo.add_clip(**args)
    with pytest.raises(NotFound):
        repo.add_clip("nobody", sha("x"), "m/x.mp4", "audio")
    with pytest.raises(NotFound):
        repo.get_clip(9999)
    assert repo.delete_clip(clip.id).media_path == "media/a.mp4"
    with pytest.raises(NotFound):
        repo.get_clip(clip.id)


# -- features and predictions ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_features_blob_round_trip(repo: Repository, dtype: type) -> None:
    repo.create_profile("Anna", LABELS)
    clip = add_clip(repo, "Anna", "a")
    rng = np.random.default_rng(0)
    embedding = rng.standard_normal(384).astype(dtype)
    tokens = rng.standard_normal((4, 3, 5)).astype(dtype).transpose(2, 0, 1)  # not C-contiguous
    repo.put_features(clip.id, "embedded", {"emoasst.embedding": embedding, "emoasst.audio": tokens})
    back = repo.get_features(clip.id, "embedded")
    assert set(back) == {"emoasst.embedding", "emoasst.audio"}
    for name, original in [("emoasst.embedding", embedding), ("emoasst.audio", tokens)]:
        assert back[name].dtype == original.dtype and back[name].shape == original.shape
        np.testing.assert_array_equal(back[name], original)
        back[name] += 1  # writable
    repo.put_features(clip.id, "embedded", {"emoasst.embedding": embedding[:10] * 2})  # replaces
    np.testing.assert_array_equal(repo.get_features(clip.id, "embedded")["emoasst.embedding"], embedding[:10] * 2)
    assert repo.get_features(clip.id, "paper") == {}
    other = add_clip(repo, "Anna", "b")
    repo.put_features(other.id, "embedded", {"emoasst.embedding": embedding})
    assert sorted(repo.profile_features("Anna", "embedded", "emoasst.embedding")) == [clip.id, other.id]
    with pytest.raises(Invalid):
        repo.put_features(clip.id, "embedded", {"bad": np.array([object()])})
    with pytest.raises(NotFound):
        repo.put_features(9999, "embedded", {"x": embedding})


def test_predictions_keep_history_and_latest_per_model(repo: Repository) -> None:
    repo.create_profile("Anna", LABELS)
    clip = add_clip(repo, "Anna", "a")
    first = repo.add_prediction(clip.id, "emoasst", {"happy": 0.6, "sad": 0.3, "angry": 0.1}, "v1")
    assert first.label == "happy" and first.margin == pytest.approx(0.3) and first.model_version == "v1"
    repo.add_prediction(clip.id, "merclip", {"sad": 0.9, "happy": 0.1})
    newer = repo.add_prediction(clip.id, "emoasst", {"happy": 0.2, "sad": 0.8})
    latest = repo.latest_predictions(clip.id)
    assert sorted(latest) == ["emoasst", "merclip"]
    assert latest["emoasst"].id == newer.id and latest["emoasst"].probs == {"happy": 0.2, "sad": 0.8}
    assert latest["merclip"].label == "sad"
    assert repo.add_prediction(clip.id, "solo", {"calm": 1.0}).margin == 1.0
    for bad in [{}, {"happy": float("nan")}, {"": 1.0}]:
        with pytest.raises(Invalid):
            repo.add_prediction(clip.id, "emoasst", bad)
    with pytest.raises(Invalid):
        repo.add_prediction(clip.id, " ", {"happy": 1.0})


# -- corrections ----------------------------------------------------------------------------


def test_corrections_undo_and_current_labels(repo: Repository) -> None:
    repo.create_profile("Anna", LABELS)
    clip, other = add_clip(repo, "Anna", "a"), add_clip(repo, "Anna", "b")
    assert repo.current_label(clip.id) is None
    repo.add_correction(clip.id, "happy", annotator="mum")
    repo.add_correction(clip.id, "sad", annotator="dad", note="tears")
    repo.add_correction(other.id, "angry")
    assert repo.current_label(clip.id) == "sad"
    assert repo.current_labels("Anna") == {clip.id: "sad", other.id: "angry"}

    undo = repo.undo_last_correction(clip.id, annotator="mum")
    assert undo.label == "sad" and undo.undoes_id is not None and undo.annotator == "mum"
    assert repo.current_label(clip.id) == "happy"
    repo.undo_last_correction(clip.id)
    assert repo.current_label(clip.id) is None
    assert repo.current_labels("Anna") == {other.id: "angry"}
    with pytest.raises(Invalid, match="nothing|no correction"):
        repo.undo_last_correction(clip.id)
    repo.add_correction(clip.id, "neutral")
    assert repo.current_label(clip.id) == "neutral"
    history = repo.corrections(clip.id)  # append-only: nothing was lost
    assert [(c.label, c.undoes_id is not None) for c in history] == [
        ("happy", False), ("sad", False), ("sad", True), ("happy", True), ("neutral", False)
    ]
    assert history[1].note == "tears"


def test_labels_outside_the_label_set(repo: Repository) -> None:
    repo.create_profile("Anna", LABELS)
    clip = add_clip(repo, "Anna", "a")
    with pytest.raises(Invalid, match="not in the label set"):
        repo.add_correction(clip.id, "surprised")
    with pytest.raises(Invalid, match="empty"):
        repo.add_correction(clip.id, "  ")
    repo.add_correction(clip.id, "surprised", allow_new_label=True)
    assert repo.get_profile("Anna").label_set == [*LABELS, "surprised"]
    assert repo.current_label(clip.id) == "surprised"
    with pytest.raises(NotFound):
        repo.add_correction(9999, "happy")


def test_labelling_queue_order(repo: Repository) -> None:
    repo.create_profile("Anna", LABELS)
    clips = {name: add_clip(repo, "Anna", name) for name in "ABCDEFG"}

    def predict(name: str, *answers: tuple[str, str, float]) -> None:
        for model, label, top in answers:
            rest = next(other for other in LABELS if other != label)
            repo.add_prediction(clips[name].id, model, {label: top, rest: 1 - top})

    predict("A", ("m1", "happy", 0.9), ("m2", "sad", 0.9))  # labelled, disagree
    predict("B", ("m1", "happy", 0.75), ("m2", "sad", 0.9))  # an old disagreement ...
    predict("B", ("m2", "happy", 0.9))  # ... superseded: now agree, margin 0.5
    predict("C", ("m1", "happy", 0.8), ("m2", "sad", 0.9))  # disagree, margin 0.6
    predict("D", ("m1", "sad", 0.55), ("m2", "sad", 0.9))  # agree, margin 0.1
    # E: no prediction at all
    predict("F", ("m1", "sad", 0.525))  # labelled, agree, margin 0.05
    predict("G", ("m1", "angry", 0.6), ("m2", "sad", 0.9))  # disagree, margin 0.2
    repo.add_correction(clips["A"].id, "happy")
    repo.add_correction(clips["F"].id, "sad")

    queue = repo.labelling_queue("Anna")
    names = {clip.id: name for name, clip in clips.items()}
    assert [names[item.clip.id] for item in queue] == ["G", "C", "D", "B", "E", "A", "F"]
    by_name = {names[item.clip.id]: item for item in queue}
    assert by_name["G"].disagree and by_name["G"].margin == pytest.approx(0.2)
    assert not by_name["B"].disagree and by_name["B"].top_labels == {"m1": "happy", "m2": "happy"}
    assert by_name["E"].margin is None and by_name["E"].top_labels == {}
    assert by_name["A"].label == "happy" and by_name["D"].label is None
    assert [names[item.clip.id] for item in repo.labelling_queue("Anna", limit=2)] == ["G", "C"]
    # the models agree on D and B, but D's face and voice point to different labels: it joins the disputed ones
    queue = repo.labelling_queue("Anna", senses_differ={clips["D"].id})
    assert [names[item.clip.id] for item in queue] == ["D", "G", "C", "B", "E", "A", "F"] and queue[0].disagree

    repo.put_senses(clips["D"].id, "embedded", {"m1": {"audio": {"sad": 0.9}, "visual": {"happy": 0.8}}, "m2": {}})
    repo.put_senses(clips["B"].id, "embedded", {"m1": {"audio": {"happy": 0.7}}})
    repo.put_senses(clips["B"].id, "paper", {"m1": {"audio": {"sad": 0.7}}})
    assert repo.senses_of_profile("Anna", "embedded") == {
        clips["D"].id: {"m1": {"audio": {"sad": 0.9}, "visual": {"happy": 0.8}}, "m2": {}},
        clips["B"].id: {"m1": {"audio": {"happy": 0.7}}}}


# -- cache snapshots ------------------------------------------------------------------------


def test_snapshot_activation_is_exclusive(repo: Repository, engine: Engine) -> None:
    anna = repo.create_profile("Anna", LABELS)
    keys = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float16)
    first = repo.save_snapshot(
        "Anna", "emoasst", {"keys": keys, "keys.audio": keys * 2}, ["happy", "sad", "happy"],
        hyper={"alpha": 1.0, "beta": 5.5}, metrics={"before": 0.5, "after": 0.75},
    )
    assert first.active and first.n_per_label == {"happy": 2, "sad": 1}
    second = repo.save_snapshot("Anna", "emoasst", {"keys": keys[:1]}, ["sad"])
    other_model = repo.save_snapshot("Anna", "merclip", {"keys": keys}, ["happy", "sad", "happy"])
    inactive = repo.save_snapshot("Anna", "emoasst", {"keys": keys}, ["a", "b", "c"], activate=False)
    assert not inactive.active

    active = repo.active_snapshot("Anna", "emoasst")
    assert active is not None and active.id == second.id
    assert repo.active_snapshot(anna.id, "merclip").id == other_model.id
    assert repo.active_snapshot("Anna", "foalnet") is None

    restored = repo.activate_snapshot(first.id)
    assert restored.active
    active = repo.active_snapshot("Anna", "emoasst")
    assert active.id == first.id and active.labels == ["happy", "sad", "happy"]
    assert active.hyper == {"alpha": 1.0, "beta": 5.5} and active.metrics == {"before": 0.5, "after": 0.75}
    arrays = active.payload_arrays()
    assert arrays["keys"].dtype == np.float16
    np.testing.assert_array_equal(arrays["keys.audio"], keys * 2)
    assert count(engine, "cache_snapshots", "WHERE active") == 2  # one per model
    listed = repo.list_snapshots("Anna", "emoasst")
    assert [s.id for s in listed] == [inactive.id, second.id, first.id]
    assert [s.active for s in listed] == [False, False, True]
    with pytest.raises(NotFound):
        repo.activate_snapshot(9999)

    # the database itself refuses a second active snapshot of the same (profile, model)
    session = make_session_factory(engine)()
    session.add(CacheSnapshot(profile_id=anna.id, model="emoasst", n_per_label={}, hyper={}, metrics={},
                              labels=[], active=True, payload=b""))
    with pytest.raises(IntegrityError):
        session.commit()
    session.close()


# -- deletes, sessions, integrity, concurrency ----------------------------------------------


def test_deleting_a_profile_removes_every_row(repo: Repository, engine: Engine) -> None:
    for name in ("Anna", "Bo"):
        repo.create_profile(name, LABELS)
        clip = add_clip(repo, name, "a")
        add_clip(repo, name, "b")
        repo.put_features(clip.id, "embedded", {"e": np.zeros(4, np.float32)})
        repo.add_prediction(clip.id, "m1", {"happy": 1.0})
        repo.add_correction(clip.id, "happy")
        repo.add_correction(clip.id, "sad")
        repo.undo_last_correction(clip.id)
        repo.save_snapshot(name, "m1", {"keys": np.zeros((1, 4))}, ["happy"])
    before = {table: count(engine, table) for table in TABLES}
    paths = repo.delete_profile("Anna")
    assert sorted(paths) == ["media/Anna/a.mp4", "media/Anna/b.mp4"]
    after = {table: count(engine, table) for table in TABLES}
    assert after == {table: n // 2 for table, n in before.items()}
    bo = repo.get_profile("Bo")
    assert count(engine, "clips", f"WHERE profile_id = {bo.id}") == 2
    with pytest.raises(NotFound):
        repo.delete_profile("Anna")


def test_repository_inside_a_caller_session(engine: Engine) -> None:
    factory = make_session_factory(engine)
    with factory() as session:
        repo = Repository(session)
        repo.create_profile("Anna", LABELS)
        add_clip(repo, "Anna", "a")
        session.rollback()  # the caller owns the transaction
    assert count(engine, "profiles") == 0
    with factory() as session:
        Repository(session).create_profile("Anna", LABELS)
        session.commit()
    assert Repository(factory).get_profile("Anna").label_set == LABELS


def test_sqlite_integrity_and_wal_after_use(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    repo = Repository(make_session_factory(engine))
    repo.create_profile("Anna", LABELS)
    clip = add_clip(repo, "Anna", "a")
    repo.add_correction(clip.id, "happy")
    repo.delete_profile("Anna")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_concurrent_writers_lose_nothing(url: str) -> None:
    writers, per_writer = 8, 200
    engine = make_engine(url, pool_size=writers)
    upgrade(engine)
    repo = Repository(make_session_factory(engine))
    repo.create_profile("Anna", LABELS)
    clips = [add_clip(repo, "Anna", str(i)) for i in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers)

    def write(writer: int) -> None:
        try:
            barrier.wait()
            for i in range(per_writer):
                clip = clips[(writer + i) % len(clips)]
                repo.add_correction(clip.id, LABELS[i % len(LABELS)], annotator=f"w{writer}", note=str(i))
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with make_session_factory(engine)() as session:
        rows = session.execute(select(Correction.annotator, Correction.note)).all()
        assert len(rows) == writers * per_writer
        assert set(rows) == {(f"w{w}", str(i)) for w in range(writers) for i in range(per_writer)}
        assert session.scalar(select(func.count()).select_from(Correction)) == writers * per_writer
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    engine.dispose()



def test_concurrent_new_labels_are_all_kept(url: str) -> None:
    """Read-modify-write of the label set: without the write lock (SQLite BEGIN IMMEDIATE,
    PostgreSQL FOR UPDATE) most of these appends are lost."""
    writers, per_writer = 8, 25
    engine = make_engine(url, pool_size=writers)
    upgrade(engine)
    repo = Repository(make_session_factory(engine))
    repo.create_profile("Anna", ["calm"])
    clip = add_clip(repo, "Anna", "a")
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            barrier.wait()
            for i in range(per_writer):
                repo.add_correction(clip.id, f"w{writer}-{i}", allow_new_label=True)
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    label_set = repo.get_profile("Anna").label_set
    assert sorted(label_set) == sorted(["calm", *(f"w{w}-{i}" for w in range(writers) for i in range(per_writer))])
    engine.dispose()
