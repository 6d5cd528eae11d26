"""Helpers for tests over tests/data: the corpus paths, a store per test, and a project's
content in comparable form (names, ids, masks, boxes)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from sqlmodel import select

from app.store.db import read_session
from app.store.masks import rle_to_mask
from app.store.models import Annotation, Concept, Image

CORPUS = Path(__file__).resolve().parents[1] / "data"
MB = 1024 * 1024


def zip_folder(folder: Path, into: Path) -> Path:
    """A .zip of `folder`'s contents (paths relative to it)."""
    return Path(shutil.make_archive(str(into), "zip", root_dir=folder))


def project_content(engine, project_id: int) -> dict:
    """Concepts (name, COCO id, supercategory); images by name (sha256, COCO id, size); annotations
    (image name, concept, RLE counts, bbox, area, iscrowd), all sorted."""
    with read_session(engine) as session:
        concepts = session.exec(select(Concept).where(Concept.project_id == project_id)).all()
        images = session.exec(select(Image).where(Image.project_id == project_id)).all()
        names = {image.id: image.original_name for image in images}
        concept_names = {concept.id: concept.name for concept in concepts}
        annotations = session.exec(select(Annotation).where(Annotation.image_id.in_(list(names)),
                                                            Annotation.deleted == False)).all()  # noqa: E712
    return {
        "concepts": sorted((c.name, c.coco_id, c.supercategory) for c in concepts),
        "images": {i.original_name: (i.sha256, i.coco_id, i.width, i.height) for i in images},
        "annotations": sorted((names[a.image_id], concept_names[a.concept_id], json.loads(a.rle)["counts"],
                               a.bbox, a.area, a.iscrowd) for a in annotations),
    }


def masks_by_image(engine, project_id: int) -> dict[str, list[tuple[str, bool, np.ndarray]]]:
    """Image name -> [(concept, iscrowd, mask)] sorted by concept and mask position."""
    content = project_content(engine, project_id)
    found: dict[str, list] = {}
    for image, concept, counts, _, _, iscrowd in content["annotations"]:
        width, height = content["images"][image][2:]
        mask = rle_to_mask({"size": [height, width], "counts": counts})
        found.setdefault(image, []).append((concept, iscrowd, mask))
    for items in found.values():
        items.sort(key=lambda item: (item[0], np.argwhere(item[2])[0].tolist()))
    return found


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))
