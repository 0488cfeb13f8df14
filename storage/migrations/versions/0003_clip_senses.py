"""Each model's own decision per sense (face, voice, words) on a stored clip.

The headline answer is "not sure" when the face and the voice point to different labels; without these
rows a stored clip (the Label tab) could only be worded from its combined answers, so the same clip read
"not sure" in the Predict tab and "fairly sure" in the Label tab. Clips stored before have no rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clip_senses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("clip_id", sa.Integer(), nullable=False),
        sa.Column("backbone_profile", sa.String(64), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("senses", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_clip_senses"),
        sa.ForeignKeyConstraint(["clip_id"], ["clips.id"], name="fk_clip_senses_clip_id_clips", ondelete="CASCADE"),
        sa.UniqueConstraint("clip_id", "backbone_profile", "model", name="uq_clip_senses_clip_id_backbone_profile_model"),
    )


def downgrade() -> None:
    op.drop_table("clip_senses")
