"""Ids of profiles, clips, corrections and cache snapshots are never given to a new row (SQLite AUTOINCREMENT).

SQLite hands a new row the largest id in the table plus one, so deleting the newest clip and uploading
another gave the new clip the deleted one's id: a page still open on the old clip, a command typed from an
earlier listing or an undo aimed at the old correction then reached the new clip. PostgreSQL's sequences
never reuse an id; this makes SQLite do the same. On SQLite each table is rebuilt (storage.db.upgrade runs
migrations with foreign keys off, so nothing cascades); its expression and partial indexes are dropped
first and made again after, since a rebuilt table's copy could not carry them. Other backends: nothing to do.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TABLES = ("profiles", "clips", "corrections", "cache_snapshots")


def _drop_special_indexes() -> None:
    op.drop_index("uq_profiles_owner_name", table_name="profiles")
    op.drop_index("uq_cache_snapshots_profile_id_model_active", table_name="cache_snapshots")


def _create_special_indexes() -> None:
    op.create_index("uq_profiles_owner_name", "profiles", [sa.text("coalesce(owner, '')"), "name"], unique=True)
    op.create_index("uq_cache_snapshots_profile_id_model_active", "cache_snapshots", ["profile_id", "model"],
                    unique=True, sqlite_where=sa.text("active"))


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _drop_special_indexes()
    for table in _TABLES:
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}):
            pass
    _create_special_indexes()


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)
