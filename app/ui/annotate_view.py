"""What the Annotate tab shows of one image, rebuilt from the database after every action.

The browser session keeps one plain dict (a gr.State, see `new_session`): the open
project and image, the selected annotation with the revision the editor was loaded
from (`base_revision`, sent with the next save), prompt clicks, and the undo stack.
Every handler returns `render(...)`: the same seven outputs, in VIEW_OUTPUTS order.

An instance is shown unless it is an unreviewed model proposal scoring below the
threshold slider; the selected instance is always shown.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import re
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image as PILImage

from app.store import projects
from app.store.annotations import list_annotations
from app.store.image_order import image_choices, image_position
from app.store.review_queue import LEAST_CERTAIN
from app.store.masks import rle_from_json, rle_to_mask
from app.store.media import media_path
from app.store.models import Annotation, Concept, Image
from app.studio import Studio
from app.ui.annotate_masks import EDITOR_CANVAS, concept_brush, editor_background, editor_value
from app.ui.messages import count_of, escape_markdown
from app.ui.annotate_overlay import Shape, render_overlay

logger = logging.getLogger(__name__)

VIEW_OUTPUTS = ("session", "image_list", "image_info", "overlay", "editor", "instances", "message")
INSTANCE_HEADERS = ["id", "concept", "status", "score", "revision"]
ALL_STATUSES = "all"
DEFAULT_THRESHOLD = 0.5
IMAGE_LIST_SIZE = 500  # the image dropdown lists this many around the open image; previous / next reach all
SELECTED_MARK = "▶ "
SELECTED_ROW_STYLE = "background-color: rgba(255, 200, 0, 0.35); font-weight: bold"  # the selected instance's row
# After each table update (no server call): scroll the table's own scroll box, never the page, so the
# selected (▶) row is in view, centred when it was out of view.
SCROLL_TO_SELECTED_JS = """() => { requestAnimationFrame(() => {
  const root = document.querySelector('#annotate-instances'); if (!root) return;
  const cell = [...root.querySelectorAll('[role=gridcell], td')].find(c => c.textContent.trim().startsWith('▶'));
  if (!cell) return;
  let box = cell.parentElement;
  while (box && box !== root && box.scrollHeight <= box.clientHeight + 1) box = box.parentElement;
  if (!box || box === root) return;
  const outer = box.getBoundingClientRect(), inner = cell.getBoundingClientRect();
  if (inner.top < outer.top + inner.height || inner.bottom > outer.bottom)
    box.scrollTop += inner.top - outer.top - (outer.height - inner.height) / 2;
}); }"""
NO_CONCEPT_COLOR = "#808080"
STATUS_OF_SOURCE = {"model": "proposal", "human": "reviewed", "import": "imported"}
NO_IMAGE = "choose a project with images first (upload them under Projects & Data)"


def new_session(project_id: int | None = None) -> dict[str, Any]:
    return {
        "project_id": project_id, "image_id": None, "status_filter": ALL_STATUSES, "concept_id": None,
        "selected": None, "base_revision": None, "clicks": [], "corner": None, "box": None,
        "candidate": 0, "undo": [], "restorable": False,
    }


def unchanged_view() -> tuple:
    """The seven VIEW outputs, each left as the page has it (fresh gr.update()s: gradio may change them)."""
    return tuple(gr.update() for _ in VIEW_OUTPUTS)


def copy_session(session: dict[str, Any] | None) -> dict[str, Any]:
    """A deep copy with every key present (handlers never mutate the value gradio holds), without the
    "restorable" mark: only opening the project or the tab sets it (app.ui.annotate_navigation), so
    the remembered place is restored only while no other handler has run since (app.ui.annotate_memory)."""
    return {**new_session(), **copy.deepcopy(session or {}), "restorable": False}


def select(session: dict[str, Any], annotation: Annotation | None) -> None:
    """Select `annotation` (None: nothing) at its current revision; prompt clicks start over."""
    session["selected"] = None if annotation is None else annotation.id
    session["base_revision"] = None if annotation is None else annotation.revision
    session["clicks"], session["corner"], session["box"], session["candidate"] = [], None, None, 0


# ---------------------------------------------------------------- reads

_PIXELS: OrderedDict[Path, np.ndarray] = OrderedDict()
_PIXELS_KEPT = 4
BACKGROUND_DIR = Path(tempfile.gettempdir()) / "sam3-studio-editor"
FAST_PATHS = True  # False: every render rebuilds all outputs and re-encodes the editor background (bench: "before")


def image_pixels(studio: Studio, image: Image) -> np.ndarray:
    """The stored image as uint8 [H, W, 3] (the last few are kept: every action redraws)."""
    path = media_path(studio.media_dir, image.path)
    if path in _PIXELS:
        _PIXELS.move_to_end(path)
        return _PIXELS[path]
    try:
        with PILImage.open(path) as source:
            pixels = np.array(source.convert("RGB"))  # writable: torch.from_numpy warns on read-only arrays
    except OSError:  # the file went missing: a grey stand-in keeps the annotations workable, the log says why
        logger.warning("image %s: cannot read %s; showing grey", image.id, path)
        return np.full((image.height, image.width, 3), 128, dtype=np.uint8)
    _PIXELS[path] = pixels
    while len(_PIXELS) > _PIXELS_KEPT:
        _PIXELS.popitem(last=False)
    return pixels


def background_file(image: Image, pixels: np.ndarray) -> str:
    """The editor background of `image` as a PNG written once (an image's pixels never change): every
    later render sends the path, and gradio copies the file instead of encoding ~0.5M pixels again."""
    path = BACKGROUND_DIR / f"{Path(image.path).stem}-{image.id}-{EDITOR_CANVAS[0]}x{EDITOR_CANVAS[1]}.png"
    if not path.is_file():
        BACKGROUND_DIR.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        PILImage.fromarray(editor_background(pixels)).save(partial, format="PNG", compress_level=1)
        os.replace(partial, path)
    return str(path)


def open_image_row(studio: Studio, session: dict[str, Any]) -> Image:
    """The session's image; ValueError when none is open."""
    if session.get("image_id") is None:
        raise ValueError(NO_IMAGE)
    return projects.get_image(studio.engine, int(session["image_id"]))


def concepts_by_id(studio: Studio, project_id: int | None) -> dict[int, Concept]:
    if project_id is None:
        return {}
    return {concept.id: concept for concept in projects.list_concepts(studio.engine, int(project_id))}


def is_shown(annotation: Annotation, threshold: float, selected: int | None) -> bool:
    hidden = annotation.source == "model" and annotation.score is not None and annotation.score < threshold
    return annotation.id == selected or not hidden


def annotation_mask(annotation: Annotation) -> np.ndarray:
    return rle_to_mask(rle_from_json(annotation.rle))


def status_filter_value(session: dict[str, Any]) -> str | None:
    """The image status the filter lists (the review queue, "least certain first", lists the proposed images)."""
    value = session.get("status_filter")
    if value == LEAST_CERTAIN:
        return "proposed"
    return None if value in (None, "", ALL_STATUSES) else value


# ---------------------------------------------------------------- outputs

def _image_list(studio: Studio, session: dict[str, Any]) -> tuple[dict, str]:
    """(dropdown update listing up to IMAGE_LIST_SIZE filtered images around the open one, 'image i of n')."""
    if session.get("project_id") is None:
        return gr.update(choices=[], value=None), ""
    project_id, status, image_id = int(session["project_id"]), status_filter_value(session), session.get("image_id")
    total = projects.count_images(studio.engine, project_id, status)
    position = None if image_id is None else image_position(studio.engine, project_id, int(image_id), status)
    offset = max(0, (position or 1) - 1 - IMAGE_LIST_SIZE // 2)
    choices = image_choices(studio.engine, project_id, status, offset=offset, limit=IMAGE_LIST_SIZE)
    entries = [(f"{choice.name} · {choice.status}", choice.image_id) for choice in choices]
    if image_id is not None and position is None:  # it left the filter (its status changed): keep it listed
        image = projects.get_image(studio.engine, int(image_id))
        entries.append((f"{image.original_name or f'image {image.id}'} · {image.status}", image.id))
        where = f"not in the '{session['status_filter']}' list any more"
    else:
        where = f"image {position} of {total}" if position is not None else f"{total} images"
    return gr.update(choices=entries, value=image_id), where


def _table_row(annotation: Annotation, concepts: dict[int, Concept], selected: int | None) -> list:
    concept = concepts.get(annotation.concept_id)
    return [
        f"{SELECTED_MARK if annotation.id == selected else ''}{annotation.id}",
        concept.name if concept else f"concept {annotation.concept_id}",
        STATUS_OF_SOURCE.get(annotation.source, annotation.source),
        "" if annotation.score is None else f"{annotation.score:.2f}",
        annotation.revision,
    ]


def editor_for(studio: Studio, session: dict[str, Any], image: Image | None = None) -> Any:
    """ImageEditor update: the image with the selected instance's mask as the layer (empty when none)."""
    if session.get("image_id") is None:
        return gr.update(value=None)
    image = image or open_image_row(studio, session)
    pixels = image_pixels(studio, image)
    concepts = concepts_by_id(studio, image.project_id)
    mask, concept_id = None, session.get("concept_id")
    if session.get("selected") is not None:
        annotation = next((a for a in list_annotations(studio.engine, image.id) if a.id == session["selected"]), None)
        if annotation is not None:
            mask, concept_id = annotation_mask(annotation), annotation.concept_id
    concept = concepts.get(concept_id) or next(iter(concepts.values()), None)
    color = concept.color if concept else NO_CONCEPT_COLOR
    background = background_file(image, pixels) if FAST_PATHS else None
    return gr.update(value=editor_value(pixels, mask, color, background), brush=concept_brush(color))


def render(
    studio: Studio, session: dict[str, Any], threshold: float | None, message: str,
    *, editor: bool = True, listing: bool = True,
) -> tuple:
    """The seven VIEW_OUTPUTS for the session's image. editor=False leaves the editor as the user has it
    (after a refused save the edit must stay); listing=False leaves the image list and the image line
    as they are (a selection changes neither: three queries and two outputs fewer); the selection is
    dropped if its annotation is gone."""
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    if not listing and session.get("image_id") is not None and FAST_PATHS:
        image_list, position = gr.update(), None
    else:
        image_list, position, listing = *_image_list(studio, session), True
    if session.get("image_id") is None:
        select(session, None)
        blank = gr.update(value=None) if editor else gr.update()
        return session, image_list, "No image open.", None, blank, instance_table([], []), message
    try:
        image = open_image_row(studio, session)
    except ValueError as error:  # deleted meanwhile
        session["image_id"] = None
        return render(studio, session, threshold, f"{message} {error}.".strip(), editor=editor)
    annotations = list_annotations(studio.engine, image.id)
    if session.get("selected") not in {a.id for a in annotations}:
        select(session, None)
    selected = session.get("selected")
    concepts = concepts_by_id(studio, image.project_id)
    shown = [a for a in annotations if is_shown(a, threshold, selected)]
    hidden = len(annotations) - len(shown)
    shapes = []
    for annotation in shown:
        concept = concepts.get(annotation.concept_id)
        score = "" if annotation.score is None or annotation.source != "model" else f" {annotation.score:.2f}"
        shapes.append(Shape(
            annotation.id, annotation_mask(annotation), tuple(float(v) for v in rle_box(annotation)),
            concept.color if concept else NO_CONCEPT_COLOR, f"#{annotation.id} {concept.name if concept else ''}{score}",
            annotation.score if annotation.source == "model" else None,
        ))
    overlay = render_overlay(image_pixels(studio, image), shapes, selected, session.get("clicks"), session.get("corner"),
                             session.get("box"))
    hidden_text = f", {count_of(hidden, 'proposal')} below threshold {threshold:.2f} hidden" if hidden else ""
    info = (
        f"**{escape_markdown(image.original_name or f'image {image.id}')}** · {image.width}×{image.height} px · "
        f"split {image.split} · "
        f"**{image.status}** · {position} · {count_of(len(shown), 'instance')} shown{hidden_text}"
    )
    table = instance_table([_table_row(annotation, concepts, selected) for annotation in shown],
                           [annotation.id == selected for annotation in shown])
    info = info if listing else gr.update()
    return (session, image_list, info, overlay, editor_for(studio, session, image) if editor else gr.update(), table, message)


def instance_table(rows: list[list], selected: list[bool]) -> dict:
    """The instance Dataframe's value: rows plus per-cell CSS (gradio's metadata "styling", the same
    Dataframe reads from a pandas Styler) that paints the selected instance's row, besides its ▶ mark."""
    styling = [[SELECTED_ROW_STYLE if is_selected else ""] * len(row) for row, is_selected in zip(rows, selected)]
    return {"headers": INSTANCE_HEADERS, "data": rows, "metadata": {"styling": styling} if rows else None}


def rle_box(annotation: Annotation) -> list[float]:
    """The stored COCO box [x, y, w, h]."""
    return json.loads(annotation.bbox)


def annotation_id_of_row(row: Any) -> int | None:
    """The id from an instance-table row ('▶ 12' or 12 in its first cell); None when unreadable."""
    if not row:
        return None
    match = re.search(r"\d+", str(row[0]))
    return int(match.group()) if match else None
