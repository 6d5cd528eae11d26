"""Handlers of the "Projects & Data" tab: plain functions of (studio, plain values).

Each takes the Studio first (the layout binds it with functools.partial) and returns
plain values or gr.update(...), so tests call them without a browser.

Input a handler cannot act on (no project chosen, an empty or duplicate name, a bad
upload mix) changes nothing: the handler returns gr.update() (no change) for its
other outputs and a status markdown starting with REFUSED that names the item and
the reason. (Not gr.Error: gradio 6 then paints an "Error" badge over every output
component, hiding the concept table until the next update.) Work that did run
(uploads, imports) reports in the same markdown, refused files included.
Uploads, imports and exports are in app.ui.data_io.
"""
from __future__ import annotations

import getpass
import hashlib
import io
import math
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image as PILImage

from app.store import projects
from app.store.media import media_path, write_atomically
from app.store.models import Image
from app.studio import Studio
from app.ui.messages import NO_PROJECT, refusal

PAGE_SIZE = 48
ALL_STATUSES = "all"
STATUS_FILTERS = (ALL_STATUSES, *projects.IMAGE_STATUSES)
THUMBNAIL_SIDE = 256
NO_CONCEPT_COLOR = "#808080"  # the colour picker's value while no concept is chosen (None blanks it)
MAX_LISTED = 50  # report lists longer than this are cut, with "... and N more"


def require_project(project_id: Any) -> int:
    if project_id in (None, ""):
        raise ValueError(NO_PROJECT)
    return int(project_id)


def code_span(name: str) -> str:
    """A user-supplied name as a markdown code span (backticks and newlines would break it)."""
    return "`" + " ".join(str(name).replace("`", "'").split()) + "`"


def listed(lines: list[str]) -> list[str]:
    extra = len(lines) - MAX_LISTED
    return lines[:MAX_LISTED] + ([f"- ... and {extra} more"] if extra > 0 else [])


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# ---------------------------------------------------------------- projects

def project_choices(studio: Studio) -> list[tuple[str, int]]:
    """(name, id) pairs for the project dropdown, oldest first."""
    return [(project.name, project.id) for project in projects.list_projects(studio.engine)]


def refresh_projects(studio: Studio, selected: int | None = None) -> dict:
    """Dropdown update listing all projects; keeps `selected` if it still exists, else the newest."""
    choices = project_choices(studio)
    ids = [project_id for _, project_id in choices]
    value = selected if selected in ids else (ids[-1] if ids else None)
    return gr.update(choices=choices, value=value)


def create_project(studio: Studio, name: str) -> tuple[dict, str, str]:
    """-> (dropdown update selecting the new project, cleared name box, status markdown)."""
    try:
        project = projects.create_project(studio.engine, name)
    except ValueError as error:
        return gr.update(), gr.update(), refusal("cannot create the project", error)
    return refresh_projects(studio, project.id), "", f"Created project {code_span(project.name)}."


# ---------------------------------------------------------------- concepts

def concept_rows(studio: Studio, project_id: int | None) -> list[list[str]]:
    """Rows [name, colour] of the project's concepts; the colour cell is a swatch (html)."""
    if project_id in (None, ""):
        return []
    return [
        [concept.name, f'<span style="color:{concept.color}">&#9632;</span> {concept.color}']
        for concept in projects.list_concepts(studio.engine, int(project_id))
    ]


def concept_dropdown(studio: Studio, project_id: int | None, selected: int | None = None) -> dict:
    """Dropdown update of (name, id) pairs; keeps `selected` if it still exists."""
    concepts = [] if project_id in (None, "") else projects.list_concepts(studio.engine, int(project_id))
    ids = [concept.id for concept in concepts]
    return gr.update(choices=[(c.name, c.id) for c in concepts], value=selected if selected in ids else None)


def add_concept(studio: Studio, project_id: int | None, name: str) -> tuple[list[list[str]], dict, str, str]:
    """-> (concept rows, concept dropdown update, cleared name box, status markdown)."""
    try:
        project_id = require_project(project_id)
        concept = projects.add_concept(studio.engine, project_id, name)
    except ValueError as error:
        return gr.update(), gr.update(), gr.update(), refusal("cannot add the concept", error)
    status = f"Added concept {code_span(concept.name)} ({concept.color})."
    return concept_rows(studio, project_id), concept_dropdown(studio, project_id), "", status


def pick_concept(studio: Studio, project_id: int | None, concept_id: int | None) -> tuple[str, str]:
    """The chosen concept's (name, colour), to fill the edit boxes; ("", NO_CONCEPT_COLOR) when none is."""
    if project_id in (None, "") or concept_id in (None, ""):
        return "", NO_CONCEPT_COLOR
    for concept in projects.list_concepts(studio.engine, int(project_id)):
        if concept.id == int(concept_id):
            return concept.name, concept.color
    return "", NO_CONCEPT_COLOR


def rename_concept(
    studio: Studio, project_id: int | None, concept_id: int | None, new_name: str, color: str | None
) -> tuple[list[list[str]], dict, str]:
    """Rename (and recolour, when a #rrggbb colour is given). -> (rows, dropdown update, status)."""
    try:
        project_id = require_project(project_id)
        if concept_id in (None, ""):
            raise ValueError("choose the concept to rename under 'Edit concept' first")
        concept = projects.rename_concept(studio.engine, int(concept_id), new_name, color or None)
    except ValueError as error:
        return gr.update(), gr.update(), refusal("cannot rename the concept", error)
    status = f"Concept is now {code_span(concept.name)} ({concept.color})."
    return concept_rows(studio, project_id), concept_dropdown(studio, project_id, concept.id), status


def delete_concept(
    studio: Studio, project_id: int | None, concept_id: int | None, pending_delete: int | None
) -> tuple[list[list[str]], dict, str, int | None]:
    """Two clicks: the first arms (returns the concept id as the new pending value and asks
    again), the second on the same concept deletes it with its annotations.
    -> (rows, dropdown update, status, pending concept id or None)."""
    try:
        project_id = require_project(project_id)
        if concept_id in (None, ""):
            raise ValueError("choose the concept to delete under 'Edit concept' first")
        concept_id = int(concept_id)
        name, _ = pick_concept(studio, project_id, concept_id)
        if not name:
            raise ValueError(f"concept {concept_id} is not in this project (deleted meanwhile?)")
    except ValueError as error:
        return gr.update(), gr.update(), refusal("cannot delete the concept", error), None
    if pending_delete != concept_id:
        status = f"Deleting {code_span(name)} also deletes all its annotations. Click **Delete** again to confirm."
        return concept_rows(studio, project_id), gr.update(), status, concept_id
    removed = projects.delete_concept(studio.engine, concept_id)
    status = f"Deleted concept {code_span(name)} and {plural(removed, 'annotation')}."
    return concept_rows(studio, project_id), concept_dropdown(studio, project_id), status, None


# ---------------------------------------------------------------- gallery

def studio_temp_root() -> Path:
    """Per-user folder under the system temp dir: gradio copies files returned from there
    into its cache without widening allowed_paths, and DATA_DIR is never served."""
    root = Path(tempfile.gettempdir()) / f"sam3-studio-{getpass.getuser()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def thumbnail_path(studio: Studio, image: Image) -> Path:
    """A JPEG of at most THUMBNAIL_SIDE px a side, made once per content hash and media folder;
    a shared grey tile when the stored file cannot be read (the caption still names the image)."""
    media_key = hashlib.sha256(str(studio.media_dir.resolve()).encode()).hexdigest()[:12]
    folder = studio_temp_root() / f"thumbs-{media_key}"
    target = folder / f"{image.sha256}.jpg"
    if target.is_file():
        return target
    try:
        with PILImage.open(media_path(studio.media_dir, image.path)) as source:
            thumb = source.convert("RGB")
        thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), reducing_gap=2.0)
    except (OSError, ValueError):
        target = folder / "missing.jpg"
        thumb = PILImage.new("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE), (160, 160, 160))
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=85)
    write_atomically(target, buffer.getvalue())
    return target


def caption(row: projects.GalleryRow) -> str:
    """'dog.png · train · 2 annotations'."""
    name = row.image.original_name or f"image {row.image.id}"
    return f"{name} · {row.image.split} · {plural(row.annotation_count, 'annotation')}"


def gallery_page(
    studio: Studio, project_id: int | None, status_filter: str | None, page: int | float | None
) -> tuple[list[tuple[str, str]], list[int], str, int]:
    """Page `page` (1-based, clamped to 1..last) of PAGE_SIZE images, upload order.
    -> ((thumbnail path, caption) items, image ids of the page, 'Page x of y' line, page)."""
    if project_id in (None, ""):
        return [], [], "No project chosen.", 1
    status = None if status_filter in (None, "", ALL_STATUSES) else status_filter
    total = projects.count_images(studio.engine, int(project_id), status)
    last_page = max(1, math.ceil(total / PAGE_SIZE))
    page = min(max(1, int(page or 1)), last_page)
    rows = projects.image_page(studio.engine, int(project_id), (page - 1) * PAGE_SIZE, PAGE_SIZE, status)
    items = [(str(thumbnail_path(studio, row.image)), caption(row)) for row in rows]
    noun = "image" if status is None else f"{status} image"
    label = f"Page {page} of {last_page} · {plural(total, noun)}"
    return items, [row.image.id for row in rows], label, page


def turn_page(
    studio: Studio, project_id: int | None, status_filter: str | None, page: int | None, step: int
) -> tuple[list[tuple[str, str]], list[int], str, int]:
    """gallery_page at page + step (clamped)."""
    return gallery_page(studio, project_id, status_filter, int(page or 1) + step)


def describe_image(image: Image) -> str:
    """'`dog.png`: 640x480 px, split **train**, unlabelled.'"""
    name = image.original_name or f"image {image.id}"
    return f"{code_span(name)}: {image.width}x{image.height} px, split **{image.split}**, {image.status}."


def select_image(studio: Studio, page_ids: list[int], index: int | None) -> tuple[int | None, str, str | None]:
    """The gallery tile at `index` -> (image id, description markdown, its split)."""
    if index is None or not 0 <= index < len(page_ids):
        return None, "Click an image to see its size and change its split.", None
    image = projects.get_image(studio.engine, page_ids[index])
    return image.id, describe_image(image), image.split


def set_split(studio: Studio, image_id: int | None, split: str | None) -> str:
    """Move the selected image to train or val. -> its new description (or the refusal)."""
    try:
        if image_id in (None, ""):
            raise ValueError("click an image in the gallery first")
        image = projects.set_image_split(studio.engine, int(image_id), split or "")
    except ValueError as error:
        return refusal("cannot change the split", error)
    return f"{describe_image(image)} Moved to **{image.split}**."
