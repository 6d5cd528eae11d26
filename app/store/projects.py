"""Projects, their concepts (noun phrases with a colour) and the image gallery.

All functions take an Engine and open their own short transaction (writes use
`write_session`, so SQLite takes the write lock at BEGIN). Bad input raises
ValueError naming the item and the reason.
"""
from __future__ import annotations

import re
from typing import NamedTuple

from sqlalchemy import Engine, false, func, select, update
from sqlalchemy.exc import IntegrityError

from app.store.db import read_session, write_session
from app.store.migrate import upgrade_database
from app.store.models import Annotation, Concept, Image, Project
from app.store.names import MAX_NAME_LENGTH, clean_name

__all__ = [
    "CONCEPT_PALETTE", "IMAGE_SPLITS", "IMAGE_STATUSES", "GalleryRow",
    "create_project", "list_projects", "get_project",
    "add_concept", "list_concepts", "rename_concept", "delete_concept",
    "image_page", "count_images", "get_image", "set_image_split", "set_image_status",
    "upgrade_database", "clean_name", "MAX_NAME_LENGTH",
]

IMAGE_SPLITS = ("train", "val")
IMAGE_STATUSES = ("unlabelled", "proposed", "reviewed")
# Sasha Trubetskoy's "20 simple, distinct colours" (first one is the model default),
# minus white and black, which vanish on masks over photos.
CONCEPT_PALETTE = (
    "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c",
    "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000", "#ffd8b1",
    "#000075", "#808080",
)
_HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")


class GalleryRow(NamedTuple):
    """One gallery tile: the image and how many non-deleted annotations it has."""

    image: Image
    annotation_count: int


# ---------------------------------------------------------------- projects

def create_project(engine: Engine, name: str) -> Project:
    """A new project; the name (trimmed) must be unique."""
    cleaned = clean_name(name, "project name")
    try:
        with write_session(engine) as session:
            if session.scalar(select(Project.id).where(Project.name == cleaned)) is not None:
                raise ValueError(f"a project named {cleaned!r} already exists")
            project = Project(name=cleaned)
            session.add(project)
            session.flush()
            return project
    except IntegrityError:  # a concurrent create on PostgreSQL got there first
        raise ValueError(f"a project named {cleaned!r} already exists") from None


def list_projects(engine: Engine) -> list[Project]:
    """All projects, oldest first."""
    with read_session(engine) as session:
        return list(session.scalars(select(Project).order_by(Project.id)))


def get_project(engine: Engine, project_id: int) -> Project:
    with read_session(engine) as session:
        project = session.get(Project, project_id)
    if project is None:
        raise ValueError(f"project {project_id} does not exist")
    return project


# ---------------------------------------------------------------- concepts

def _check_color(color: str) -> str:
    if not isinstance(color, str) or not _HEX_COLOR.fullmatch(color):
        raise ValueError(f"colour {color!r} is not of the form #rrggbb")
    return color.lower()


def _check_concept_name_free(session, project_id: int, name: str, except_id: int | None = None) -> None:
    """Concept names are unique per project, ignoring case ("Crack" and "crack" prompt alike)."""
    query = select(Concept.name).where(Concept.project_id == project_id, func.lower(Concept.name) == name.lower())
    if except_id is not None:
        query = query.where(Concept.id != except_id)
    existing = session.scalar(query)
    if existing is not None:
        raise ValueError(f"project {project_id} already has a concept named {existing!r}")


def add_concept(engine: Engine, project_id: int, name: str, color: str | None = None) -> Concept:
    """A new concept (noun phrase) of a project; colour is the first palette colour the
    project does not use yet (cycling once all are used) when not given."""
    cleaned = clean_name(name, "concept phrase")
    chosen = None if color is None else _check_color(color)
    try:
        with write_session(engine) as session:
            if session.get(Project, project_id) is None:
                raise ValueError(f"project {project_id} does not exist")
            _check_concept_name_free(session, project_id, cleaned)
            if chosen is None:
                used = list(session.scalars(select(Concept.color).where(Concept.project_id == project_id)))
                free = [c for c in CONCEPT_PALETTE if c not in {u.lower() for u in used}]
                chosen = free[0] if free else CONCEPT_PALETTE[len(used) % len(CONCEPT_PALETTE)]
            concept = Concept(project_id=project_id, name=cleaned, color=chosen)
            session.add(concept)
            session.flush()
            return concept
    except IntegrityError:
        raise ValueError(f"project {project_id} already has a concept named {cleaned!r}") from None


def list_concepts(engine: Engine, project_id: int) -> list[Concept]:
    """The project's concepts in the order they were added."""
    with read_session(engine) as session:
        return list(session.scalars(select(Concept).where(Concept.project_id == project_id).order_by(Concept.id)))


def rename_concept(engine: Engine, concept_id: int, name: str, color: str | None = None) -> Concept:
    """Change a concept's phrase (and its colour when given); annotations keep pointing at it."""
    cleaned = clean_name(name, "concept phrase")
    try:
        with write_session(engine) as session:
            concept = session.get(Concept, concept_id)
            if concept is None:
                raise ValueError(f"concept {concept_id} does not exist")
            _check_concept_name_free(session, concept.project_id, cleaned, except_id=concept_id)
            concept.name = cleaned
            if color is not None:
                concept.color = _check_color(color)
            session.flush()
            return concept
    except IntegrityError:
        raise ValueError(f"concept {concept_id}: the name {cleaned!r} is taken in its project") from None


def delete_concept(engine: Engine, concept_id: int) -> int:
    """Delete a concept and (by ON DELETE CASCADE) its annotations and their history.
    Returns how many non-deleted annotations went with it, for the UI's confirmation."""
    with write_session(engine) as session:
        if session.get(Concept, concept_id) is None:
            raise ValueError(f"concept {concept_id} does not exist")
        live = session.scalar(
            select(func.count()).select_from(Annotation).where(Annotation.concept_id == concept_id, Annotation.deleted == false())
        )
        session.execute(Concept.__table__.delete().where(Concept.__table__.c.id == concept_id))
        return int(live)


# ---------------------------------------------------------------- images

def _check_status(status: str | None) -> None:
    if status is not None and status not in IMAGE_STATUSES:
        raise ValueError(f"image status {status!r} is not one of {', '.join(IMAGE_STATUSES)}")


def image_page(engine: Engine, project_id: int, offset: int, limit: int, status: str | None = None) -> list[GalleryRow]:
    """One gallery page, images in upload (id) order, each with its count of non-deleted annotations.

    One query: the page's image ids are chosen first (index (project_id, id), or
    (project_id, status, id) when filtered) and only those rows are joined to the
    annotation counts (index (image_id, deleted)), so a deep page costs a walk of
    `offset` index entries plus `limit` counts, not a count over the whole project.
    """
    if offset < 0 or limit < 1:
        raise ValueError(f"page offset must be >= 0 and limit >= 1, got offset={offset} limit={limit}")
    _check_status(status)
    page_ids = select(Image.id).where(Image.project_id == project_id)
    if status is not None:
        page_ids = page_ids.where(Image.status == status)
    page_ids = page_ids.order_by(Image.id).offset(offset).limit(limit).subquery("page")
    live_count = (
        select(func.count())
        .select_from(Annotation)
        .where(Annotation.image_id == Image.id, Annotation.deleted == false())
        .correlate(Image)
        .scalar_subquery()
    )
    query = select(Image, live_count).join(page_ids, page_ids.c.id == Image.id).order_by(Image.id)
    with read_session(engine) as session:
        return [GalleryRow(image, int(count)) for image, count in session.execute(query)]


def count_images(engine: Engine, project_id: int, status: str | None = None) -> int:
    """How many images the project has (with that status, when given)."""
    _check_status(status)
    query = select(func.count()).select_from(Image).where(Image.project_id == project_id)
    if status is not None:
        query = query.where(Image.status == status)
    with read_session(engine) as session:
        return int(session.scalar(query))


def get_image(engine: Engine, image_id: int) -> Image:
    with read_session(engine) as session:
        image = session.get(Image, image_id)
    if image is None:
        raise ValueError(f"image {image_id} does not exist")
    return image


def _set_image_field(engine: Engine, image_id: int, **values: str) -> Image:
    with write_session(engine) as session:
        result = session.execute(update(Image).where(Image.id == image_id).values(**values))
        if result.rowcount == 0:
            raise ValueError(f"image {image_id} does not exist")
        return session.get(Image, image_id)


def set_image_split(engine: Engine, image_id: int, split: str) -> Image:
    """Move an image to the train or val split."""
    if split not in IMAGE_SPLITS:
        raise ValueError(f"image {image_id}: split {split!r} is not one of {', '.join(IMAGE_SPLITS)}")
    return _set_image_field(engine, image_id, split=split)


def set_image_status(engine: Engine, image_id: int, status: str) -> Image:
    """Mark an image unlabelled, proposed or reviewed."""
    if status not in IMAGE_STATUSES:
        raise ValueError(f"image {image_id}: status {status!r} is not one of {', '.join(IMAGE_STATUSES)}")
    return _set_image_field(engine, image_id, status=status)
