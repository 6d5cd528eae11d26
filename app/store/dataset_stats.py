"""What a fine-tune of a project would train on, counted: images per split, instances per
concept and split, and the model proposals still waiting for review.

The instance counts use the same rows as `coco_export.dataset_snapshot` (current, not
deleted, source other than "model"): a summary never promises examples a job leaves out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, func
from sqlmodel import select

from app.store.db import read_session
from app.store.models import Annotation, Concept, Image


@dataclass(frozen=True)
class ConceptCount:
    concept_id: int
    name: str
    train_instances: int
    val_instances: int

    @property
    def instances(self) -> int:
        return self.train_instances + self.val_instances


@dataclass(frozen=True)
class DatasetSummary:
    """images_by_split: {"train": n, "val": m}; concepts in id order, every concept of the project
    (zero counts included); labelled_images: images with at least one training instance."""

    images_by_split: dict[str, int]
    labelled_images: int
    concepts: list[ConceptCount] = field(default_factory=list)
    pending_proposals: int = 0

    @property
    def images(self) -> int:
        return sum(self.images_by_split.values())

    @property
    def instances(self) -> int:
        return sum(concept.instances for concept in self.concepts)


def trained_annotations(project_id: int) -> list:
    """WHERE clauses of the annotations a fine-tune of the project learns from (dataset_snapshot
    and the summary share them): live, and not an unreviewed model proposal."""
    return [Image.project_id == project_id, Annotation.deleted == False, Annotation.source != "model"]  # noqa: E712


def dataset_summary(engine: Engine, project_id: int) -> DatasetSummary:
    """Counts for the Train tab, in four grouped queries."""
    with read_session(engine) as session:
        splits = dict(session.exec(
            select(Image.split, func.count(Image.id)).where(Image.project_id == project_id).group_by(Image.split)
        ).all())
        per_concept = session.exec(
            select(Annotation.concept_id, Image.split, func.count(Annotation.id))
            .join(Image, Image.id == Annotation.image_id)
            .where(*trained_annotations(project_id))
            .group_by(Annotation.concept_id, Image.split)
        ).all()
        labelled = session.exec(
            select(func.count(func.distinct(Annotation.image_id)))
            .join(Image, Image.id == Annotation.image_id)
            .where(*trained_annotations(project_id))
        ).one()
        pending = session.exec(
            select(func.count(Annotation.id))
            .join(Image, Image.id == Annotation.image_id)
            .where(Image.project_id == project_id, Annotation.deleted == False,  # noqa: E712
                   Annotation.source == "model")
        ).one()
        concepts = session.exec(select(Concept).where(Concept.project_id == project_id).order_by(Concept.id)).all()
    counts: dict[tuple[int, str], int] = {(concept_id, split): count for concept_id, split, count in per_concept}
    return DatasetSummary(
        images_by_split={"train": splits.get("train", 0), "val": splits.get("val", 0)},
        labelled_images=int(labelled),
        concepts=[ConceptCount(c.id, c.name, counts.get((c.id, "train"), 0), counts.get((c.id, "val"), 0))
                  for c in concepts],
        pending_proposals=int(pending),
    )


def has_val_images(engine: Engine, project_id: int) -> bool:
    """True when some image of the project is marked `val` (the worker then validates on those)."""
    with read_session(engine) as session:
        return session.exec(
            select(Image.id).where(Image.project_id == project_id, Image.split == "val")
        ).first() is not None
