"""YOLO-seg export in Ultralytics' layout, written the way Ultralytics' own COCO converter
(`ultralytics.data.converter.convert_coco`, use_segments=True) writes it.

One row per object: `class x1 y1 x2 y2 ...` with coordinates / (W, H) in [0, 1]. An
object of several parts is ONE row: its parts' outlines joined at their closest
points by a zero-width bridge walked there and back (as Ultralytics'
`merge_multi_segment`), so the row still rasterises to the union of the parts.
Crowd annotations are left out (Ultralytics skips iscrowd). Holes are not
representable in YOLO-seg and are filled (outer contours only).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np
import yaml
from sqlalchemy import Engine

from app.store.export_data import ExportAnnotation, export_file_names, load_export_data, place_image, require_empty
from app.store.masks import rle_to_mask
from app.store.media import write_atomically
from app.store.polygons import mask_to_polygons


def join_parts(parts: list[np.ndarray]) -> np.ndarray:
    """Outlines [N_k, 2] of one object's parts -> one ring [M, 2] visiting each part.

    Part k is entered at `enter[k]` (its point closest to part k-1; 0 for the first) and
    left at `leave[k]` (its point closest to part k+1). Going out: each part from enter
    to leave, the last one all the way round; coming back: each part from leave round
    to enter. Each bridge is walked once each way, so it encloses no area.
    """
    if len(parts) == 1:
        return parts[0]
    enter, leave = [0], []
    for first, second in zip(parts, parts[1:]):
        distances = ((first[:, None, :] - second[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(np.argmin(distances)), distances.shape)
        leave.append(int(i))
        enter.append(int(j))

    def arc(part: np.ndarray, start: int, stop: int, full: bool = False) -> np.ndarray:
        """Points of `part` from index start to stop going forward, both included (a full turn when full)."""
        count = len(part)
        steps = count if full else (stop - start) % count
        return part[(start + np.arange(steps + 1)) % count]

    out = [arc(part, enter[k], leave[k]) for k, part in enumerate(parts[:-1])]
    out.append(arc(parts[-1], enter[-1], enter[-1], full=True))
    back = [arc(parts[k], leave[k], enter[k]) for k in range(len(parts) - 2, -1, -1)]
    return np.concatenate(out + back)


def yolo_row(annotation: ExportAnnotation, class_index: int, width: int, height: int, tolerance: float) -> str | None:
    """`class x1 y1 ...` for one object (its parts joined), or None when it has no outline."""
    parts = mask_to_polygons(rle_to_mask(annotation.rle), tolerance=tolerance)
    if not parts:
        return None
    normalised = (join_parts(parts) / np.array([width, height], dtype=float)).clip(0.0, 1.0)
    return " ".join([str(class_index)] + [f"{v:.6f}" for v in normalised.ravel()])


def export_yolo_seg(
    engine: Engine, media_dir: Path | str, project_id: int, dest_dir: Path | str,
    snapshot: Iterable | None = None, split: str | None = None, tolerance: float = 0.0,
) -> Path:
    """Ultralytics YOLO-seg layout; returns dest_dir/data.yaml.

    dest_dir must be empty or new (YOLO reads every file in the folders).
    images/<split>/<name>.png, labels/<split>/<name>.txt (empty for negatives), data.yaml
    with `names` {class index: concept name}; class index = rank of the concept id; names
    are the images' source base names (export_data.export_file_names).
    Polygons: the outer contour of each part along pixel edges; with the default `tolerance`
    0 they rasterise back to exactly the stored mask (holes filled), so YOLO -> import ->
    export -> import changes nothing; a tolerance > 0 simplifies them (Douglas-Peucker, px).
    """
    dest = Path(dest_dir)
    require_empty(dest, "YOLO")
    data = load_export_data(engine, project_id, snapshot, split)
    class_of = {concept.id: index for index, concept in enumerate(data.concepts)}
    file_names = export_file_names(data.images, keep_folders=False)
    splits = [split] if split else ["train", "val"]
    for name in splits:
        (dest / "images" / name).mkdir(parents=True, exist_ok=True)
        (dest / "labels" / name).mkdir(parents=True, exist_ok=True)
    for image in data.images:
        file_name = file_names[image.id]
        place_image(media_dir, image, dest / "images" / image.split / file_name)
        rows = [yolo_row(annotation, class_of[annotation.concept_id], image.width, image.height, tolerance)
                for annotation in data.annotations[image.id] if not annotation.iscrowd]
        label_text = "".join(row + "\n" for row in rows if row)
        label_name = PurePosixPath(file_name).with_suffix(".txt").name
        write_atomically(dest / "labels" / image.split / label_name, label_text.encode("ascii"))
    config = {"path": str(dest.resolve()), "names": {index: c.name for index, c in enumerate(data.concepts)}}
    config.update({name: f"images/{name}" for name in splits})
    yaml_path = dest / "data.yaml"
    write_atomically(yaml_path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode("utf-8"))
    return yaml_path
