"""Gallery indexes: per-image count of live annotations, and the status-filtered page.

`image_page` counts non-deleted annotations of the images on one page; with
(image_id, deleted) that count is read from the index alone instead of visiting
every annotation row. A gallery filtered by status ("unlabelled") walks
(project_id, status, id) in id order instead of scanning the project's images.
Indexes only: the downgrade drops them and every row stays.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""
from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_annotation_image_id_deleted", "annotation", ["image_id", "deleted"])
    op.create_index("ix_image_project_id_status_id", "image", ["project_id", "status", "id"])


def downgrade() -> None:
    op.drop_index("ix_image_project_id_status_id", table_name="image")
    op.drop_index("ix_annotation_image_id_deleted", table_name="annotation")
