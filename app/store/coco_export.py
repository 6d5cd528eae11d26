"""COCO export of a project's labels (the training format; the YOLO-seg and PNG-mask
exports live in yolo_export.py and png_mask_export.py, the shared reading in export_data.py).

Every image of the project (or of one split) is exported, annotated or not: images
without annotations are negatives for training. Images are hard-linked from the media
store (copied when a link is impossible), always through media.media_path.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Engine

from app.store.export_data import (
    ExportError, dataset_snapshot, export_file_names, kept_ids, load_export_data, place_image,
)
from app.store.masks import rle_area
from app.store.media import write_atomically

__all__ = ["ExportError", "dataset_snapshot", "export_coco"]


def export_coco(
    engine: Engine, media_dir: Path | str, project_id: int, dest_dir: Path | str,
    snapshot: Iterable | None = None, split: str | None = None, include_proposals: bool = False,
) -> Path:
    """Write dest_dir/images/<file name> and dest_dir/annotations.json; returns the json path.

    Categories: the project's concepts with their COCO id and supercategory when they came
    from COCO (else the concept id), images: their COCO id and source file name as .png
    (export_data.kept_ids, export_file_names); annotation ids are the store's; masks are
    compressed RLE (exact round trip); area = mask pixel count, bbox = stored tight box.
    Extra keys pycocotools ignores: images carry split, status, original_name, sha256;
    annotations carry revision and source (human | import | model), and score for model
    proposals, which are only exported with `include_proposals`.
    """
    data = load_export_data(engine, project_id, snapshot, split, include_proposals)
    dest = Path(dest_dir)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    category_ids = kept_ids(data.concepts, "coco_id")
    image_ids = kept_ids(data.images, "coco_id")
    file_names = export_file_names(data.images)
    document = {
        "info": {"description": f"SAM3 LoRA Studio project {project_id}", "split": split or "all",
                 "proposals": "included, marked source 'model'" if include_proposals else "left out"},
        "licenses": [],
        "categories": [{"id": category_ids[c.id], "name": c.name, "supercategory": c.supercategory, "color": c.color}
                       for c in data.concepts],
        "images": [],
        "annotations": [],
    }
    for image in data.images:
        place_image(media_dir, image, dest / "images" / file_names[image.id])
        document["images"].append(
            {"id": image_ids[image.id], "file_name": file_names[image.id], "width": image.width,
             "height": image.height, "split": image.split, "status": image.status,
             "original_name": image.original_name, "sha256": image.sha256}
        )
        for annotation in data.annotations[image.id]:
            entry = {"id": annotation.id, "image_id": image_ids[image.id],
                     "category_id": category_ids[annotation.concept_id], "segmentation": annotation.rle,
                     "area": float(rle_area(annotation.rle)), "bbox": annotation.bbox,
                     "iscrowd": int(annotation.iscrowd), "revision": annotation.revision, "source": annotation.source}
            if annotation.source == "model":
                entry["score"] = annotation.score
            document["annotations"].append(entry)
    json_path = dest / "annotations.json"
    write_atomically(json_path, json.dumps(document).encode("utf-8"))
    return json_path
