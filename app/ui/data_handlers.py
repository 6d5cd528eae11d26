"""Handlers of the "Projects & Data" tab: plain functions of (studio, plain values).

Each takes the Studio first (the layout binds it with functools.partial) and returns
plain values or gr.update(...), so tests call them without a browser.

Input a handler cannot act on (no project chosen, an empty or duplicate name, a bad
upload mix) changes nothing: the handler returns gr.update() (no change) for its
other outputs and a status markdown starting with REFUSED that names the item and
the reason. (Not gr.Error: gradio 6 then paints an "Error" badge over every output
component, hiding the concept table until the next update.) Work that did run
(uploads, imports) reports in the same markdown, refused files included.
"""
from __future__ import annotations

import getpass
import hashlib
import io
import math
import os
import re
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr
from PIL import Image as PILImage

from app.store import projects
from app.store.coco_export import export_coco, export_png_masks, export_yolo_seg
from app.store.coco_import import ImportReport, import_coco, import_coco_zip
from app.store.media import media_path, write_atomically
from app.store.models import Image
from app.store.uploads import UploadReport, ingest_files, ingest_zip
from app.studio import Studio
from app.ui.messages import NO_PROJECT, refusal

PAGE_SIZE = 48
ALL_STATUSES = "all"
STATUS_FILTERS = (ALL_STATUSES, *projects.IMAGE_STATUSES)
THUMBNAIL_SIDE = 256
NO_CONCEPT_COLOR = "#808080"  # the colour picker's value while no concept is chosen (None blanks it)
MAX_LISTED = 50  # report lists longer than this are cut, with "... and N more"
EXPORT_MAX_AGE_S = 3600  # gradio has copied a zip to its cache long before this
EXPORTERS: dict[str, tuple[Callable[..., Path], str]] = {
    "COCO": (export_coco, "coco"),
    "YOLO-seg": (export_yolo_seg, "yolo-seg"),
    "PNG masks": (export_png_masks, "png-masks"),
}


def _require_project(project_id: Any) -> int:
    if project_id in (None, ""):
        raise ValueError(NO_PROJECT)
    return int(project_id)


def _code(name: str) -> str:
    """A user-supplied name as a markdown code span (backticks and newlines would break it)."""
    return "`" + " ".join(str(name).replace("`", "'").split()) + "`"


def _listed(lines: list[str]) -> list[str]:
    extra = len(lines) - MAX_LISTED
    return lines[:MAX_LISTED] + ([f"- ... and {extra} more"] if extra > 0 else [])


def _plural(count: int, noun: str) -> str:
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
    return refresh_projects(studio, project.id), "", f"Created project {_code(project.name)}."


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
        project_id = _require_project(project_id)
        concept = projects.add_concept(studio.engine, project_id, name)
    except ValueError as error:
        return gr.update(), gr.update(), gr.update(), refusal("cannot add the concept", error)
    status = f"Added concept {_code(concept.name)} ({concept.color})."
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
        project_id = _require_project(project_id)
        if concept_id in (None, ""):
            raise ValueError("choose the concept to rename under 'Edit concept' first")
        concept = projects.rename_concept(studio.engine, int(concept_id), new_name, color or None)
    except ValueError as error:
        return gr.update(), gr.update(), refusal("cannot rename the concept", error)
    status = f"Concept is now {_code(concept.name)} ({concept.color})."
    return concept_rows(studio, project_id), concept_dropdown(studio, project_id, concept.id), status


def delete_concept(
    studio: Studio, project_id: int | None, concept_id: int | None, pending_delete: int | None
) -> tuple[list[list[str]], dict, str, int | None]:
    """Two clicks: the first arms (returns the concept id as the new pending value and asks
    again), the second on the same concept deletes it with its annotations.
    -> (rows, dropdown update, status, pending concept id or None)."""
    try:
        project_id = _require_project(project_id)
        if concept_id in (None, ""):
            raise ValueError("choose the concept to delete under 'Edit concept' first")
        concept_id = int(concept_id)
        name, _ = pick_concept(studio, project_id, concept_id)
        if not name:
            raise ValueError(f"concept {concept_id} is not in this project (deleted meanwhile?)")
    except ValueError as error:
        return gr.update(), gr.update(), refusal("cannot delete the concept", error), None
    if pending_delete != concept_id:
        status = f"Deleting {_code(name)} also deletes all its annotations. Click **Delete** again to confirm."
        return concept_rows(studio, project_id), gr.update(), status, concept_id
    removed = projects.delete_concept(studio.engine, concept_id)
    status = f"Deleted concept {_code(name)} and {_plural(removed, 'annotation')}."
    return concept_rows(studio, project_id), concept_dropdown(studio, project_id), status, None


# ---------------------------------------------------------------- uploads and COCO import

def _merge(into: UploadReport, other: UploadReport) -> None:
    into.accepted += other.accepted
    into.refused += other.refused
    into.duplicates += other.duplicates
    into.image_ids.update(other.image_ids)


def _is_zip(path: str) -> bool:
    return path.lower().endswith(".zip")


def upload_images(studio: Studio, project_id: int | None, paths: Sequence[str] | None) -> str:
    """Ingest image files and zips (each member is one file of the upload). -> report markdown."""
    try:
        project_id = _require_project(project_id)
        if not paths:
            raise ValueError("choose image files (or .zip archives of images) to upload first")
    except ValueError as error:
        return refusal("", error)
    max_bytes = studio.settings.max_upload_bytes
    report = ingest_files(studio.engine, studio.media_dir, project_id, [p for p in paths if not _is_zip(p)], max_bytes)
    for zip_path in filter(_is_zip, paths):
        name = Path(zip_path).name
        _merge(report, ingest_zip(studio.engine, studio.media_dir, project_id, Path(zip_path), max_bytes, zip_name=name))
    return upload_report_markdown(report)


def upload_report_markdown(report: UploadReport) -> str:
    """'**3 added**, 1 already in the project, 1 refused.' then one bullet per refused / duplicate file."""
    lines = [
        f"**{len(report.accepted)} added**, {len(report.duplicates)} already in the project, "
        f"{len(report.refused)} refused."
    ]
    if report.refused:
        lines += ["", "Refused:", *_listed([f"- {_code(name)}: {reason}" for name, reason in report.refused])]
    if report.duplicates:
        lines += ["", "Already in this project:", *_listed([f"- {_code(name)}" for name in report.duplicates])]
    return "\n".join(lines)


def _gather_images(image_paths: list[str]) -> Path:
    """A temp folder holding the uploaded images under their own names (gradio keeps each
    upload in its own folder); hard links where possible, copies otherwise."""
    folder = Path(tempfile.mkdtemp(prefix="coco-images-", dir=_studio_temp_root()))
    for source in image_paths:
        target = folder / Path(source).name
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    return folder


def import_coco_upload(studio: Studio, project_id: int | None, paths: Sequence[str] | None) -> str:
    """One .zip (a COCO .json and its images) or one .json plus its image files. -> report markdown."""
    try:
        project_id = _require_project(project_id)
    except ValueError as error:
        return refusal("", error)
    paths = list(paths or [])
    zips = [p for p in paths if _is_zip(p)]
    jsons = [p for p in paths if p.lower().endswith(".json")]
    images = [p for p in paths if p not in zips and p not in jsons]
    max_bytes = studio.settings.max_upload_bytes
    if len(zips) == 1 and len(paths) == 1:
        report = import_coco_zip(
            studio.engine, studio.media_dir, project_id, Path(zips[0]), max_bytes, zip_name=Path(zips[0]).name
        )
    elif len(jsons) == 1 and not zips:
        folder = _gather_images(images)
        try:
            report = import_coco(studio.engine, studio.media_dir, project_id, Path(jsons[0]), folder, max_bytes)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        got = ", ".join(Path(p).name for p in paths) or "nothing"
        return refusal("", f"upload either one .zip holding a COCO .json and its images, or one .json plus its image files (got: {got})")
    return import_report_markdown(report)


def import_report_markdown(report: ImportReport) -> str:
    """Totals, then refused images, then skipped items grouped by reason."""
    images = report.images
    lines = [
        f"**{report.annotations_imported} annotations imported**; images: {len(images.accepted)} added, "
        f"{len(images.duplicates)} already in the project, {len(images.refused)} refused.",
    ]
    if report.concepts_created:
        lines.append(f"New concepts: {', '.join(_code(name) for name in report.concepts_created)}.")
    if report.clipped:
        lines.append(f"Clipped to their image (they reached outside it): {_plural(report.clipped, 'annotation')}.")
    if report.boxes_as_masks:
        lines.append(f"Stored as box-shaped masks (they had only a box): {_plural(report.boxes_as_masks, 'annotation')}.")
    if images.refused:
        lines += ["", "Refused images:", *_listed([f"- {_code(name)}: {reason}" for name, reason in images.refused])]
    by_reason: dict[str, list[str]] = defaultdict(list)
    for item, reason in report.skipped:
        by_reason[reason].append(item)
    if by_reason:
        lines += ["", f"Skipped ({len(report.skipped)}):"]
        bullets = []
        for reason, items in by_reason.items():
            shown = ", ".join(_code(item) for item in items[:10]) + (f" and {len(items) - 10} more" if len(items) > 10 else "")
            bullets.append(f"- {reason} ({len(items)}): {shown}" if len(items) > 1 else f"- {shown}: {reason}")
        lines += _listed(bullets)
    return "\n".join(lines)


# ---------------------------------------------------------------- gallery

def _studio_temp_root() -> Path:
    """Per-user folder under the system temp dir: gradio copies files returned from there
    into its cache without widening allowed_paths, and DATA_DIR is never served."""
    root = Path(tempfile.gettempdir()) / f"sam3-studio-{getpass.getuser()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def thumbnail_path(studio: Studio, image: Image) -> Path:
    """A JPEG of at most THUMBNAIL_SIDE px a side, made once per content hash and media folder;
    a shared grey tile when the stored file cannot be read (the caption still names the image)."""
    media_key = hashlib.sha256(str(studio.media_dir.resolve()).encode()).hexdigest()[:12]
    folder = _studio_temp_root() / f"thumbs-{media_key}"
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
    return f"{name} · {row.image.split} · {_plural(row.annotation_count, 'annotation')}"


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
    label = f"Page {page} of {last_page} · {_plural(total, noun)}"
    return items, [row.image.id for row in rows], label, page


def turn_page(
    studio: Studio, project_id: int | None, status_filter: str | None, page: int | None, step: int
) -> tuple[list[tuple[str, str]], list[int], str, int]:
    """gallery_page at page + step (clamped)."""
    return gallery_page(studio, project_id, status_filter, int(page or 1) + step)


def describe_image(image: Image) -> str:
    """'`dog.png`: 640x480 px, split **train**, unlabelled.'"""
    name = image.original_name or f"image {image.id}"
    return f"{_code(name)}: {image.width}x{image.height} px, split **{image.split}**, {image.status}."


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


# ---------------------------------------------------------------- export

def _sweep_old_exports(root: Path) -> None:
    cutoff = time.time() - EXPORT_MAX_AGE_S
    for folder in root.glob("export-*"):
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # another session swept it first
            continue


def export_project(studio: Studio, project_id: int | None, export_format: str) -> tuple[str | None, str]:
    """Export the project in `export_format` (a key of EXPORTERS) and zip it in a fresh temp
    folder. -> (zip path, its top folder being '<project>-<format>/', or None; status markdown)."""
    try:
        project_id = _require_project(project_id)
        if export_format not in EXPORTERS:
            raise ValueError(f"unknown export format {export_format!r}; one of {', '.join(EXPORTERS)}")
        project = projects.get_project(studio.engine, project_id)
    except ValueError as error:
        return None, refusal("cannot export", error)
    exporter, suffix = EXPORTERS[export_format]
    root = _studio_temp_root()
    _sweep_old_exports(root)
    work = Path(tempfile.mkdtemp(prefix="export-", dir=root))
    stem = f"{re.sub(r'[^A-Za-z0-9._-]+', '-', project.name).strip('-.') or 'project'}-{suffix}"
    exporter(studio.engine, studio.media_dir, project_id, work / stem)
    archive = shutil.make_archive(str(work / stem), "zip", root_dir=work, base_dir=stem)
    shutil.rmtree(work / stem)
    return archive, f"{export_format} export of {_code(project.name)} is ready: {_code(Path(archive).name)}."
