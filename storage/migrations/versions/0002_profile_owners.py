"""Profiles of different owners may share a name; each profile records its owner's last activity.

A name was unique across the whole database, so a visitor of a public deployment learned from
"already exists" that someone else had a profile of that name. Names are now unique per owner
(profiles without an owner count as one owner). `last_active` lets a public demo delete a
visitor's data after a stated time without activity.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        batch.add_column(sa.Column("last_active", _WHEN, nullable=True))
    op.execute("UPDATE profiles SET last_active = created")
    # On SQLite this rebuilds the table: storage.db.upgrade runs migrations with foreign keys off,
    # so dropping the old table does not cascade into clips and caches.
    with op.batch_alter_table("profiles") as batch:
        batch.alter_column("last_active", existing_type=_WHEN, nullable=False)
        batch.drop_constraint("uq_profiles_name", type_="unique")
    op.create_index("ix_profiles_owner", "profiles", ["owner"])
    op.create_index("uq_profiles_owner_name", "profiles", [sa.text("coalesce(owner, '')"), "name"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_profiles_owner_name", table_name="profiles")
    op.drop_index("ix_profiles_owner", table_name="profiles")
    with op.batch_alter_table("profiles") as batch:
        batch.create_unique_constraint("uq_profiles_name", ["name"])
        batch.drop_column("last_active")
