"""SQLModel tables of the studio. Alembic migrations in migrations/ must match these exactly.

Masks are COCO RLE (JSON text `{"size": [h, w], "counts": "..."}`), boxes are
COCO `[x, y, w, h]` in pixels of the stored image. Times are UTC.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Project(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    # after a fine-tune succeeds: "ask" (the Train tab offers to re-propose the unreviewed
    # images with the new adapter) | "auto" (the worker submits that pre-label job itself)
    prelabel_after_finetune: str = Field(default="ask", sa_column_kwargs={"server_default": "ask"})
    created_at: datetime = Field(default_factory=utcnow)


class Concept(SQLModel, table=True):
    """A noun phrase the model is prompted with ("crack"), with its display colour."""

    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True, ondelete="CASCADE")
    name: str
    color: str = "#e6194b"
    coco_id: int | None = None  # the category id of the COCO file it came from (kept on export)
    supercategory: str = Field(default="", sa_column_kwargs={"server_default": ""})
    created_at: datetime = Field(default_factory=utcnow)


class Image(SQLModel, table=True):
    """An image of a project; the PNG lives once per content hash under DATA_DIR/media."""

    __table_args__ = (
        UniqueConstraint("project_id", "sha256"),
        Index("ix_image_project_id_id", "project_id", "id"),
        # the gallery filtered by status walks this in id order (migration 0002)
        Index("ix_image_project_id_status_id", "project_id", "status", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", ondelete="CASCADE")
    sha256: str = Field(index=True)
    width: int
    height: int
    split: str = "train"  # train | val
    status: str = "unlabelled"  # unlabelled | proposed | reviewed
    path: str  # relative to the media folder
    original_name: str = ""
    coco_id: int | None = None  # the image id of the COCO file it came from (kept on export)
    created_at: datetime = Field(default_factory=utcnow)


class Annotation(SQLModel, table=True):
    """One instance mask of one concept on one image; `revision` grows by 1 per save."""

    __table_args__ = (
        Index("ix_annotation_image_id_concept_id", "image_id", "concept_id"),
        # covers the gallery's count of non-deleted annotations per image (migration 0002)
        Index("ix_annotation_image_id_deleted", "image_id", "deleted"),
    )
    id: int | None = Field(default=None, primary_key=True)
    image_id: int = Field(foreign_key="image.id", ondelete="CASCADE")
    concept_id: int = Field(foreign_key="concept.id", index=True, ondelete="CASCADE")
    rle: str = Field(sa_column=Column(Text, nullable=False))
    bbox: str = Field(sa_column=Column(Text, nullable=False))  # JSON [x, y, w, h]
    area: float = 0.0
    iscrowd: bool = False
    source: str = "human"  # human | model | import
    score: float | None = None
    # the model that first proposed it ("base" | "adapter:<id>"; "" for human / imported shapes);
    # kept through edits, so review outcomes count per adapter (app/store/proposal_outcomes.py)
    proposed_by: str = Field(default="", sa_column_kwargs={"server_default": ""})
    revision: int = 1
    deleted: bool = False
    updated_at: datetime = Field(default_factory=utcnow)


class AnnotationHistory(SQLModel, table=True):
    """Append-only: every save attempt of an annotation, including refused (conflict) ones."""

    id: int | None = Field(default=None, primary_key=True)
    annotation_id: int = Field(foreign_key="annotation.id", index=True, ondelete="CASCADE")
    revision: int  # the revision this attempt produced (saved) or was based on (conflict)
    outcome: str = "saved"  # saved | conflict
    concept_id: int
    rle: str = Field(sa_column=Column(Text, nullable=False))
    bbox: str = Field(sa_column=Column(Text, nullable=False))
    source: str = "human"
    score: float | None = None
    deleted: bool = False
    author: str = ""
    saved_at: datetime = Field(default_factory=utcnow)


class Job(SQLModel, table=True):
    """A fine-tune or a pre-label run. The row, not the broker, is the source of truth (architecture.md).

    kind "train": dataset_snapshot = [[annotation_id, revision], ...]; kind "prelabel":
    dataset_snapshot = [image_id, ...], the images it proposes for (app/jobs/prelabel.py).
    """

    __table_args__ = (Index("ix_job_state_heartbeat", "state", "heartbeat_at"),)
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True, ondelete="CASCADE")
    kind: str = Field(default="train", sa_column_kwargs={"server_default": "train"})  # train | prelabel
    state: str = "queued"  # queued | running | succeeded | failed | cancelled
    config_json: str = Field(sa_column=Column(Text, nullable=False))
    dataset_snapshot: str = Field(sa_column=Column(Text, nullable=False))  # JSON [[annotation_id, revision], ...]
    created_at: datetime = Field(default_factory=utcnow)
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    attempt: int = 0
    max_attempts: int = 3
    cancel_requested: bool = False
    worker: str = ""
    step: int = 0
    total_steps: int = 0
    checkpoint_path: str = ""
    error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))


class Metric(SQLModel, table=True):
    """One value of one curve at one step: (job, step, split, name) -> value."""

    __table_args__ = (Index("ix_metric_job_id_id", "job_id", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", ondelete="CASCADE")
    step: int
    epoch: float = 0.0
    split: str = "train"  # train | val
    name: str  # e.g. loss, loss_giou, lr, images_per_s, num_boxes, segm_mAP
    value: float
    created_at: datetime = Field(default_factory=utcnow)


class Adapter(SQLModel, table=True):
    """A trained LoRA adapter: a PEFT folder under the media store."""

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True, ondelete="CASCADE")
    job_id: int | None = Field(default=None, foreign_key="job.id", index=True, ondelete="SET NULL")
    name: str
    path: str  # relative to the media folder
    base_model: str = ""
    metrics_json: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    created_at: datetime = Field(default_factory=utcnow)


class PrelabelMark(SQLModel, table=True):
    """One image done by a pre-label job, written in the same transaction as its proposals:
    a resumed job skips marked images, and the (job, image) key refuses a second write."""

    __table_args__ = (UniqueConstraint("job_id", "image_id"),)
    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", ondelete="CASCADE")
    image_id: int = Field(foreign_key="image.id", index=True, ondelete="CASCADE")
    proposals: int = 0  # proposals written (0 too when the image was reviewed meanwhile and left alone)
    skipped: bool = False  # the image was reviewed by the time its turn came: nothing written
    presence_json: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))  # {concept_id: p}
    created_at: datetime = Field(default_factory=utcnow)
