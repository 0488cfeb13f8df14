"""Persistence of EmoWeb: SQLAlchemy schema, Alembic migrations, and the `Repository`.

Never imports torch or gradio (nor the application): `emoweb` depends on `storage`, not back.
"""
from .db import make_engine, make_session_factory, open_database, upgrade
from .errors import Invalid, NotFound, StorageError
from .labelqueue import QueueItem
from .repo import Repository

__all__ = [
    "Invalid",
    "NotFound",
    "QueueItem",
    "Repository",
    "StorageError",
    "make_engine",
    "make_session_factory",
    "open_database",
    "upgrade",
]
