"""PNG-mask export in the Pascal VOC / CVAT "Segmentation mask" layout.

    JPEGImages/<name>.png            the images (PNG, the pixels that were labelled)
    SegmentationClass/<name>.png     palette PNG: value = label index in labelmap.txt
    SegmentationObject/<name>.png    palette PNG: value = instance 1..N of that image
    labelmap.txt                     `label:r,g,b::` per line, line i = index i (CVAT)
    ImageSets/Segmentation/{train,val}.txt   the names of each split

Index 0 is the background and 255 is "ignore" (VOC's void, mmsegmentation's
ignore_index): crowd annotations are painted 255 in both masks. Crowds are painted
first, then instances largest first, so a smaller object on top of a larger one (or
inside a crowd) stays visible. More than 254 labels or instances do not fit a palette:
that mask is written as 16-bit greyscale instead (same values).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import Engine

from app.store.export_data import export_file_names, load_export_data, place_image, require_empty
from app.store.masks import rle_area, rle_to_mask
from app.store.media import write_atomically

IGNORE = 255
BACKGROUND_COLOR = (0, 0, 0)
IGNORE_COLOR = (224, 224, 192)  # VOC's colour for void


def voc_colormap(count: int = 256) -> list[tuple[int, int, int]]:
    """Pascal VOC's palette: the bits of the index spread over r, g, b from the top bit down."""
    colors = []
    for index in range(count):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colors.append((r, g, b))
    return colors


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))


def write_index_png(values: np.ndarray, path: Path, palette: list[tuple[int, int, int]]) -> None:
    """values uint [H, W] -> a palette PNG (values <= 255) or 16-bit greyscale PNG, atomically."""
    if int(values.max(initial=0)) <= IGNORE:
        image = PILImage.fromarray(values.astype(np.uint8), mode="P")
        image.putpalette([channel for color in palette for channel in color])
    else:
        image = PILImage.fromarray(values.astype(np.uint16))
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".tmp-{path.name}")
    image.save(temp, format="PNG")
    os.replace(temp, path)


def export_png_masks(
    engine: Engine, media_dir: Path | str, project_id: int, dest_dir: Path | str,
    snapshot: Iterable | None = None, split: str | None = None,
) -> Path:
    """The VOC/CVAT layout above into dest_dir (empty or new); returns dest_dir/labelmap.txt."""
    dest = Path(dest_dir)
    require_empty(dest, "PNG mask")
    data = load_export_data(engine, project_id, snapshot, split)
    label_of = {concept.id: index for index, concept in enumerate(data.concepts, start=1)}
    class_palette = voc_colormap()
    for concept in data.concepts:
        if label_of[concept.id] < IGNORE:
            class_palette[label_of[concept.id]] = hex_to_rgb(concept.color)
    class_palette[0], class_palette[IGNORE] = BACKGROUND_COLOR, IGNORE_COLOR
    object_palette = voc_colormap()
    object_palette[IGNORE] = IGNORE_COLOR
    file_names = export_file_names(data.images, keep_folders=False)
    members: dict[str, list[str]] = {"train": [], "val": []}
    for image in data.images:
        name = file_names[image.id]
        place_image(media_dir, image, dest / "JPEGImages" / name)
        classes = np.zeros((image.height, image.width), dtype=np.int64)
        objects = np.zeros((image.height, image.width), dtype=np.int64)
        annotations = data.annotations[image.id]
        for crowd in (a for a in annotations if a.iscrowd):
            mask = rle_to_mask(crowd.rle)
            classes[mask], objects[mask] = IGNORE, IGNORE
        instances = sorted((a for a in annotations if not a.iscrowd), key=lambda a: (-rle_area(a.rle), a.id))
        for number, annotation in enumerate(instances, start=1):
            mask = rle_to_mask(annotation.rle)
            classes[mask] = label_of[annotation.concept_id]
            objects[mask] = number if number < IGNORE else number + 1  # 255 stays "ignore"
        write_index_png(classes, dest / "SegmentationClass" / name, class_palette)
        write_index_png(objects, dest / "SegmentationObject" / name, object_palette)
        members[image.split].append(PurePosixPath(name).stem)
    for split_name, stems in members.items():
        if stems or split in (None, split_name):
            write_atomically(dest / "ImageSets" / "Segmentation" / f"{split_name}.txt",
                             "".join(f"{stem}\n" for stem in stems).encode("utf-8"))
    lines = ["# label:color_rgb:parts:actions", "background:0,0,0::"]
    lines += [f"{concept.name.replace(':', ' ')}:{','.join(map(str, hex_to_rgb(concept.color)))}::"
              for concept in data.concepts]
    labelmap = dest / "labelmap.txt"
    write_atomically(labelmap, ("\n".join(lines) + "\n").encode("utf-8"))
    return labelmap
