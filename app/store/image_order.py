"""Walking a project's images one by one, in upload (id) order, optionally of one status.

The Annotate tab steps through images with previous / next while labelling changes
their status (unlabelled -> proposed -> reviewed), so "next" is the first image after
the current id that has the filtered status now, not an index into a list fetched earlier.
Queries use the (project_id, id) and (project_id, status, id) indexes of `image`.
"""
from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import Engine, func, select

from app.store.db import read_session
from app.store.models import Image
from app.store.projects import IMAGE_STATUSES

__all__ = ["ImageChoice", "image_choices", "image_position", "neighbour_image_id"]


class ImageChoice(NamedTuple):
    """One entry of the image list: id, display name, status."""

    image_id: int
    name: str
    status: str


def _check_status(status: str | None) -> None:
    if status is not None and status not in IMAGE_STATUSES:
        raise ValueError(f"image status {status!r} is not one of {', '.join(IMAGE_STATUSES)}")


def image_choices(
    engine: Engine, project_id: int, status: str | None = None, offset: int = 0, limit: int = 500
) -> list[ImageChoice]:
    """The project's images (of `status` when given) in upload order, `limit` of them from `offset`."""
    _check_status(status)
    if offset < 0 or limit < 1:
        raise ValueError(f"offset must be >= 0 and limit >= 1, got offset={offset} limit={limit}")
    query = select(Image.id, Image.original_name, Image.status).where(Image.project_id == project_id)
    if status is not None:
        query = query.where(Image.status == status)
    with read_session(engine) as session:
        rows = session.execute(query.order_by(Image.id).offset(offset).limit(limit)).all()
    return [ImageChoice(image_id, name or f"image {image_id}", image_status) for image_id, name, image_status in rows]


def image_position(engine: Engine, project_id: int, image_id: int, status: str | None = None) -> int | None:
    """1-based place of the image in the (filtered) upload order; None when it is not in that list."""
    _check_status(status)
    in_list = select(Image.id).where(Image.id == image_id, Image.project_id == project_id)
    before = select(func.count()).select_from(Image).where(Image.project_id == project_id, Image.id <= image_id)
    if status is not None:
        in_list, before = in_list.where(Image.status == status), before.where(Image.status == status)
    with read_session(engine) as session:
        if session.scalar(in_list) is None:
            return None
        return int(session.scalar(before))


def neighbour_image_id(
    engine: Engine, project_id: int, image_id: int | None, step: int, status: str | None = None
) -> int | None:
    """The id of the next (step > 0) or previous (step < 0) image after / before `image_id`
    in upload order, of `status` when given; with image_id None, the first (or last) one.
    None when there is no such image."""
    if step == 0:
        raise ValueError("step must be +1 (next) or -1 (previous), got 0")
    _check_status(status)
    query = select(Image.id).where(Image.project_id == project_id)
    if status is not None:
        query = query.where(Image.status == status)
    if image_id is not None:
        query = query.where(Image.id > image_id if step > 0 else Image.id < image_id)
    query = query.order_by(Image.id if step > 0 else Image.id.desc()).limit(1)
    with read_session(engine) as session:
        return session.scalar(query)
