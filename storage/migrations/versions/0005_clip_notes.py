"""What decoding noticed about a clip ("only the first 60 s were analysed", "no face found") is stored with it.

The notes were only in the first analysis's output: the same clip uploaded again, or shown in the Label
tab, carried its answer without them, so an answer read from a minute of a long video looked as whole
as any. Clips stored before have no notes ([]).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN (SQLite allows it with a default): a batch rebuild would lose 0004's AUTOINCREMENT
    op.add_column("clips", sa.Column("notes", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))


def downgrade() -> None:
    with op.batch_alter_table("clips", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("notes")
