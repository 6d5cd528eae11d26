"""Pre-label jobs (issue 17): `job.kind` (train | prelabel), `annotation.proposed_by` (which
model proposed it: "base" | "adapter:<id>" | ""), `project.prelabel_after_finetune` ("ask" |
"auto": what a finished fine-tune does about the unreviewed images), and `prelabelmark`, one row per image a
pre-label job finished, written in the same transaction as that image's proposals (a resumed
job skips marked images; the unique (job_id, image_id) refuses a second write).

Existing rows get kind "train", proposed_by "" and "ask" (server defaults); the downgrade drops the
table and the columns, keeping every other value (batch mode rebuilds the SQLite tables).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("project") as batch:
        batch.add_column(sa.Column("prelabel_after_finetune", sa.String(), nullable=False, server_default="ask"))
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("kind", sa.String(), nullable=False, server_default="train"))
    with op.batch_alter_table("annotation") as batch:
        batch.add_column(sa.Column("proposed_by", sa.String(), nullable=False, server_default=""))
    op.create_table(
        "prelabelmark",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("job.id", ondelete="CASCADE"), nullable=False),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("image.id", ondelete="CASCADE"), nullable=False),
        sa.Column("proposals", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Boolean(), nullable=False),
        sa.Column("presence_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("job_id", "image_id"),
    )
    op.create_index("ix_prelabelmark_image_id", "prelabelmark", ["image_id"])


def downgrade() -> None:
    op.drop_index("ix_prelabelmark_image_id", table_name="prelabelmark")
    op.drop_table("prelabelmark")
    with op.batch_alter_table("annotation") as batch:
        batch.drop_column("proposed_by")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("kind")
    with op.batch_alter_table("project") as batch:
        batch.drop_column("prelabel_after_finetune")
