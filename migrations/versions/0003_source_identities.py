"""Source identities: the COCO ids and supercategory a dataset came with.

An export keeps the ids and supercategory of data imported from COCO (issue 13:
category ids renumbered and supercategory dropped lost the link to the source):
`concept.coco_id`, `concept.supercategory`, `image.coco_id`. Nullable / defaulted
columns only: existing rows get NULL / "" and the downgrade drops them, keeping
every other value (batch mode rebuilds the SQLite tables).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("concept") as batch:
        batch.add_column(sa.Column("coco_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("supercategory", sa.String(), nullable=False,
                                   server_default=""))
    with op.batch_alter_table("image") as batch:
        batch.add_column(sa.Column("coco_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("image") as batch:
        batch.drop_column("coco_id")
    with op.batch_alter_table("concept") as batch:
        batch.drop_column("supercategory")
        batch.drop_column("coco_id")
