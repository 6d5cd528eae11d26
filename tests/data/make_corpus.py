"""Writes the test corpus in this folder: small files in the formats other tools export.

Run `python tests/data/make_corpus.py` from the repository root to write them again
(deterministic: fixed seeds, no timestamps). tests/data/README.md says what each is.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

HERE = Path(__file__).resolve().parent
W, H = 48, 32  # every corpus image is 48 x 32 as stored in the file (raw, before any EXIF turn)


def scene(seed: int, size=(W, H)) -> np.ndarray:
    """A dark noisy picture with a bright rectangle at x 4..16, y 4..12 (what the annotations mark)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 40, (size[1], size[0], 3), dtype=np.uint8)
    pixels[4:12, 4:16] = 235
    return pixels


def save(pixels: np.ndarray, path: Path, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG" if path.suffix == ".jpg" else "PNG", **options)
    path.write_bytes(buffer.getvalue())


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


RECT = [4.0, 4.0, 16.0, 4.0, 16.0, 12.0, 4.0, 12.0]  # the bright rectangle as a polygon
TRIANGLE = [24.0, 20.0, 40.0, 20.0, 32.0, 30.0]


def label_studio() -> None:
    """Label Studio's COCO export: categories from 0, file names under images/, string flags."""
    folder = HERE / "label_studio"
    save(scene(1), folder / "images" / "0f3c9a2e-scene.jpg", quality=95)
    save(scene(2), folder / "images" / "7b1d44c0-street.jpg", quality=95)
    write_json(folder / "result.json", {
        "images": [{"width": W, "height": H, "id": 0, "file_name": "images/0f3c9a2e-scene.jpg"},
                   {"width": W, "height": H, "id": 1, "file_name": "images/7b1d44c0-street.jpg"}],
        "categories": [{"id": 0, "name": "crack"}, {"id": 1, "name": "pothole"}],
        "annotations": [
            {"id": 0, "image_id": 0, "category_id": 0, "segmentation": [RECT], "bbox": [4, 4, 12, 8],
             "ignore": 0, "iscrowd": "false", "area": 96},
            {"id": 1, "image_id": 0, "category_id": 1, "segmentation": [TRIANGLE], "bbox": [24, 20, 16, 10],
             "ignore": 0, "iscrowd": "0", "area": 80},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [RECT], "bbox": [4, 4, 12, 8],
             "ignore": 0, "iscrowd": "true", "area": 96},
            {"id": 3, "image_id": 1, "category_id": 0, "segmentation": [TRIANGLE], "bbox": [24, 20, 16, 10],
             "ignore": 0, "iscrowd": False, "area": 80},
        ],
        "info": {"year": 2026, "version": "1.0", "description": "", "contributor": "Label Studio", "url": "",
                 "date_created": "2026-11-30 10:00:00.000000"},
    })


def roboflow() -> None:
    """Roboflow's COCO export: the dataset itself is category 0, the supercategory of the classes."""
    folder = HERE / "roboflow" / "train"
    save(scene(3), folder / "scene_jpg.rf.4d1f0c2b9e.jpg", quality=95)
    save(scene(4), folder / "bridge_png.rf.99aa01be77.jpg", quality=95)
    write_json(folder / "_annotations.coco.json", {
        "info": {"year": "2026", "version": "2", "description": "Exported from roboflow.com",
                 "contributor": "", "url": "https://public.roboflow.com", "date_created": "2026-11-30T10:00:00+00:00"},
        "licenses": [{"id": 1, "url": "https://creativecommons.org/licenses/by/4.0/", "name": "CC BY 4.0"}],
        "categories": [{"id": 0, "name": "road-defects", "supercategory": "none"},
                       {"id": 1, "name": "crack", "supercategory": "road-defects"},
                       {"id": 2, "name": "pothole", "supercategory": "road-defects"}],
        "images": [{"id": 0, "license": 1, "file_name": "scene_jpg.rf.4d1f0c2b9e.jpg", "height": H, "width": W,
                    "date_captured": "2026-11-30T10:00:00+00:00"},
                   {"id": 1, "license": 1, "file_name": "bridge_png.rf.99aa01be77.jpg", "height": H, "width": W,
                    "date_captured": "2026-11-30T10:00:00+00:00"}],
        "annotations": [
            {"id": 0, "image_id": 0, "category_id": 1, "bbox": [4, 4, 12, 8], "area": 96,
             "segmentation": [RECT], "iscrowd": 0},
            {"id": 1, "image_id": 1, "category_id": 2, "bbox": [24, 20, 16, 10], "area": 80,
             "segmentation": [TRIANGLE], "iscrowd": 0},
        ],
    })


def parts_holes_and_crowds() -> None:
    """Several polygon parts in one annotation, a compressed-RLE ring with a hole, an
    uncompressed-RLE crowd (COCO's own form for crowds: counts as a list, column-major)."""
    folder = HERE / "parts_holes_crowds"
    save(scene(5, (64, 48)), folder / "images" / "yard.png")
    yy, xx = np.mgrid[:48, :64]
    donut = ((yy - 30) ** 2 + (xx - 44) ** 2 < 12 ** 2) & ((yy - 30) ** 2 + (xx - 44) ** 2 >= 5 ** 2)
    crowd = np.zeros((48, 64), dtype=np.uint8)
    crowd[36:46, 2:26] = 1
    flat = crowd.T.ravel()
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    ring = coco_mask.encode(np.asfortranarray(donut.astype(np.uint8)))
    write_json(folder / "instances.json", {
        "images": [{"id": 7, "file_name": "yard.png", "width": 64, "height": 48}],
        "categories": [{"id": 3, "name": "stone", "supercategory": "ground"},
                       {"id": 9, "name": "people", "supercategory": "person"}],
        "annotations": [
            {"id": 100, "image_id": 7, "category_id": 3, "iscrowd": 0,
             "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10], [20, 2, 30, 2, 25, 12]], "bbox": [2, 2, 28, 10]},
            {"id": 101, "image_id": 7, "category_id": 3, "iscrowd": 0,
             "segmentation": {"size": [48, 64], "counts": ring["counts"].decode("ascii")}, "bbox": [32, 18, 24, 24]},
            {"id": 102, "image_id": 7, "category_id": 9, "iscrowd": 1,
             "segmentation": {"size": [48, 64], "counts": ([0] if flat[0] else []) + runs}, "bbox": [2, 36, 24, 10]},
        ],
    })


def exif_jpegs() -> None:
    """The same raw pixels with EXIF orientation 1..8 (what a phone writes instead of turning pixels)."""
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(scene(6), HERE / "exif" / f"orientation-{orientation}.jpg", quality=95, exif=exif.tobytes())


def wide_images() -> None:
    """A 16-bit greyscale PNG (a 12-bit sensor's range, 1000..4000) and a float32 TIFF (-1..1)."""
    folder = HERE / "wide"
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.tile(np.linspace(0.0, 1.0, W), (H, 1))
    ramp[4:12, 4:16] = 1.0
    Image.fromarray((1000 + 3000 * ramp).astype(np.uint16)).save(folder / "gray16.png")
    Image.fromarray((2 * ramp - 1).astype(np.float32), mode="F").save(folder / "float32.tif")


def hostile() -> None:
    """Files that once crashed or corrupted an import (issue 13); each must be refused by name."""
    folder = HERE / "hostile"
    folder.mkdir(parents=True, exist_ok=True)
    image = {"id": 1, "file_name": "a.png", "width": 10, "height": 10}
    (folder / "polygon_bomb.json").write_text(json.dumps(
        {"images": [image], "categories": [{"id": 1, "name": "x"}],
         "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 3e7, 0, 0, 3e7]]}]},
        separators=(",", ":")))
    save(np.full((10, 10, 3), 128, dtype=np.uint8), folder / "a.png")


if __name__ == "__main__":
    label_studio()
    roboflow()
    parts_holes_and_crowds()
    exif_jpegs()
    wide_images()
    hostile()
