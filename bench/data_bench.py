"""Training data path throughput: find-queries/s the loader delivers, 0 vs N worker processes.

A synthetic COCO set of JPEG photos-like images (smooth colour fields plus noise, so
they compress like photos) at 1080p (1920x1080) and at 12 MP (4000x3000), each with
2 concepts (2 polygon instances each) and 2 negatives, at SAM3's input size 1008 with
the default augmentation (flip, scale jitter 0.75-1.25). Measured through
`sam3_lora.group_loader.build_group_loader` (what train() iterates): one epoch, after
the workers have started, so queries/s = find-queries delivered / seconds.

For reference, "per-query (before)" is the path before issue 15, rebuilt here:
every find-query in the main process decodes its image at full size and its masks
through a float copy (`old_find_query_item`; augmentation left out, which flatters it). Torch runs one
thread in the main process, as in each worker (DataLoader sets 1 there), so 0 vs N
workers compares processes, not thread pools.

Run: python bench/data_bench.py [--images 12] [--workers 2]
Timings go here, never into tests.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from sam3_lora.augment import AugmentSettings
from sam3_lora.data import FindQueryDataset
from sam3_lora.group_loader import build_group_loader, close_loader
from sam3_lora.image_groups import ImageGroupDataset
from sam3_lora.preprocess import image_to_tensor, normalize_pixels
from sam3_lora.tiny import build_tiny_tokenizer

IMAGE_SIZE = 1008
CONCEPTS = ("circle", "square", "triangle", "ring")
SIZES = {"1080p": (1920, 1080), "12 MP": (4000, 3000)}


def write_jpeg_set(folder: Path, width: int, height: int, count: int, seed: int = 0) -> Path:
    """`count` JPEGs (quality 90) of width x height, 2 concepts x 2 polygon instances each; returns the COCO json."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    small = (width // 16, height // 16)
    for image_id in range(1, count + 1):
        field = rng.integers(0, 256, size=(small[1], small[0], 3), dtype=np.uint8)
        image = Image.fromarray(field).resize((width, height), Image.BILINEAR)
        noise = rng.integers(-12, 13, size=(height, width, 3))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for concept in rng.choice(len(CONCEPTS), size=2, replace=False).tolist():
            for _ in range(2):
                x, y = rng.uniform(0.1, 0.8) * width, rng.uniform(0.1, 0.8) * height
                w, h = rng.uniform(0.05, 0.2) * width, rng.uniform(0.05, 0.2) * height
                polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
                draw.polygon(polygon, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": concept + 1,
                                    "segmentation": [polygon], "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        image.save(folder / "images" / f"{image_id:04d}.jpg", quality=90)
        images.append({"id": image_id, "file_name": f"{image_id:04d}.jpg", "width": width, "height": height})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CONCEPTS)]
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def loader_queries_per_s(groups: ImageGroupDataset, workers: int, batch_size: int) -> float:
    """Find-queries/s over one epoch of the training loader (the workers' start-up excluded)."""
    loader = build_group_loader(groups, batch_size, seed=0, num_workers=workers)
    try:
        loader.batch_sampler.start(0, 0)
        iterator = iter(loader)
        first = next(iterator)  # workers started and one batch made
        started, queries = time.perf_counter(), 0
        for batch in iterator:
            queries += len(batch["targets"])
        seconds = time.perf_counter() - started
    finally:
        close_loader(loader)
    del first
    return queries / seconds


def old_find_query_item(queries: FindQueryDataset, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What FindQueryDataset[index] did before issue 15: full-size decode, float mask resize."""
    query = queries.queries[index]
    record = next(r for r in queries.records if r.image_id == query.image_id)
    with Image.open(record.path) as image:
        pixels = normalize_pixels(image_to_tensor(np.array(image.convert("RGB"))), queries.image_size)
    rles = record.instances.get(query.category_id, []) if query.positive else []
    size = queries.image_size
    masks = torch.zeros((0, size, size), dtype=torch.bool)
    if rles:
        source = torch.from_numpy(np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1)))
        masks = F.interpolate(source[:, None].float(), size=(size, size), mode="nearest-exact")[:, 0].bool()
    return pixels, masks


def per_query_queries_per_s(queries: FindQueryDataset, count: int) -> float:
    """The old path: one full decode per find-query, in the main process."""
    started = time.perf_counter()
    for index in range(count):
        old_find_query_item(queries, index)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12, help="images per size (default 12)")
    parser.add_argument("--workers", type=int, default=2, help="the N of N workers (default 2)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per micro-batch (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = build_tiny_tokenizer()
    augment = AugmentSettings(hflip_prob=0.5, scale_min=0.75, scale_max=1.25)
    print(f"loader throughput, find-queries/s (2 concepts + 2 negatives per image), {IMAGE_SIZE} px, "
          f"{args.images} JPEGs per size, batch {args.batch_size} image(s)")
    print(f"{'images':<8} {'per-query (before)':>19} {'0 workers':>10} {f'{args.workers} workers':>10} "
          f"{'N/0':>6} {'0 workers/before':>17}")
    with tempfile.TemporaryDirectory() as folder:
        for name, (width, height) in SIZES.items():
            annotations = write_jpeg_set(Path(folder) / name.replace(" ", ""), width, height, args.images)
            queries = FindQueryDataset(annotations, annotations.parent / "images", tokenizer, IMAGE_SIZE,
                                       negatives_per_image=2, augment=augment)
            groups = ImageGroupDataset(queries, augment, seed=0)
            before = per_query_queries_per_s(queries, min(len(queries), 8))
            zero = loader_queries_per_s(groups, 0, args.batch_size)
            many = loader_queries_per_s(groups, args.workers, args.batch_size)
            print(f"{name:<8} {before:19.2f} {zero:10.2f} {many:10.2f} {many / zero:5.2f}x {zero / before:16.2f}x")


if __name__ == "__main__":
    main()
