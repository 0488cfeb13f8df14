"""Engines, sessions and migrations.

SQLite is the default (one file, one machine); any other SQLAlchemy URL (PostgreSQL) is
used as is, for several app replicas on one database.
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# busy_timeout first: a writer waits for the lock instead of failing; synchronous=NORMAL is
# durable in WAL mode except for the last commits on power loss. WAL (readers never block the
# writer) is switched on separately, see _ensure_wal.
BUSY_TIMEOUT_MS = 10000
SQLITE_PRAGMAS = (f"busy_timeout={BUSY_TIMEOUT_MS}", "foreign_keys=ON", "synchronous=NORMAL")

# Arbitrary constant: the PostgreSQL advisory lock that serialises concurrent migrations.
_PG_MIGRATION_LOCK = 0x456D6F57


def to_url(url_or_path: str | os.PathLike[str]) -> str:
    """A SQLAlchemy URL; a bare file path means a SQLite file there."""
    text = os.fspath(url_or_path)
    return text if "://" in text else f"sqlite:///{Path(text).expanduser().resolve()}"


def _ensure_wal(cursor: Any) -> None:
    """Switch the file to WAL once; concurrent first connections retry instead of failing.

    The switch needs an exclusive lock and SQLite answers "database is locked" at once, without
    its busy handler, when another connection is converting or writing at that moment.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(f"PRAGMA {pragma}")
    _ensure_wal(cursor)
    cursor.close()


def make_engine(url_or_path: str | os.PathLike[str], **kwargs: Any) -> Engine:
    """An engine; for SQLite, creates the file's folder and sets the PRAGMAs on every connection."""
    engine = create_engine(to_url(url_or_path), **kwargs)
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        event.listen(engine, "connect", _set_sqlite_pragmas)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (they are returned to callers)."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(connection: Connection) -> Config:
    """Alembic configuration built in code (no alembic.ini), bound to an open connection.

    Also the way to write a new revision:
    `command.revision(alembic_config(conn), "message", autogenerate=True)`.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _lock_for_migration(connection: Connection) -> None:
    """Serialise concurrent first starts, so two replicas never both create the tables."""
    if connection.dialect.name == "sqlite":
        # Takes the write lock now (waiting busy_timeout), and makes the DDL one transaction.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")


def upgrade(engine_or_url: Engine | str | os.PathLike[str]) -> None:
    """Bring the database to the newest schema revision; a no-op when it is already there."""
    engine = engine_or_url if isinstance(engine_or_url, Engine) else make_engine(engine_or_url)
    try:
        with engine.connect() as connection:
            sqlite_db = connection.dialect.name == "sqlite"
            if sqlite_db:  # a table rebuilt by a migration must not cascade-delete its children
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")  # only outside a transaction
                connection.commit()  # ends SQLAlchemy's autobegun one (the driver began none for a PRAGMA)
            try:
                with connection.begin():
                    _lock_for_migration(connection)
                    command.upgrade(alembic_config(connection), "head")
                    if sqlite_db and connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                        raise RuntimeError("a migration left rows whose parent row is gone; nothing was changed")
            finally:
                if sqlite_db:
                    connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                    connection.commit()
    finally:
        if engine is not engine_or_url:
            engine.dispose()


def open_database(url_or_path: str | os.PathLike[str]) -> sessionmaker[Session]:
    """What the app calls at start: engine, schema brought to head, session factory."""
    engine = make_engine(url_or_path)
    upgrade(engine)
    return make_session_factory(engine)
