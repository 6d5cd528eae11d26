"""COCO import at dataset scale: throughput and peak memory for a synthetic COCO of
50,000 images (and 5,000, to show that memory stays flat as the file grows).

Writes, in a temp dir, a COCO json with N tiny distinct PNG images (24 x 16 px) and two
polygon annotations each, then imports it into a fresh SQLite studio database in a
child process per size (so each peak RSS is its own) and prints images/s,
annotations/s, the child's peak RSS during the import above its RSS just before it
(Linux: VmHWM reset through /proc/self/clear_refs), and, for scale, how much memory `json.loads` of the same file takes, which the
streaming reader avoids. Not pass/fail: compare the ratios printed.
Run: .venv/bin/python bench/import_bench.py [N ...]   (default: 5000 50000)
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 24, 16

CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
from app.store.coco_import import import_coco
from app.store.db import make_engine
from app.store.migrate import upgrade_database
from app.store.projects import create_project
def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

def start_measuring():
    # writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS (Linux >= 4.0)
    open("/proc/self/clear_refs", "w").write("5")
    return status_kb("VmRSS")

mode, folder = sys.argv[1], sys.argv[2]
if mode == "json.loads":
    base = start_measuring()
    started = time.monotonic()
    document = json.loads(open(folder + "/annotations.json", "rb").read())
    result = {{"seconds": time.monotonic() - started, "images": len(document["images"]), "annotations": 0}}
else:
    url = "sqlite:///" + folder + "/studio.db"
    upgrade_database(url)
    engine = make_engine(url)
    project = create_project(engine, "bench")
    base = start_measuring()
    started = time.monotonic()
    report = import_coco(engine, folder + "/media", project.id, __import__("pathlib").Path(folder + "/annotations.json"),
                         __import__("pathlib").Path(folder + "/images"), 200 * 1024 * 1024)
    result = {{"seconds": time.monotonic() - started, "images": len(report.images.accepted),
              "annotations": report.annotations_imported, "skipped": len(report.skipped)}}
result["peak_mb"] = (status_kb("VmHWM") - base) / 1024
print(json.dumps(result))
"""


def write_dataset(folder: Path, count: int) -> int:
    """N distinct images (their index spelled in the first pixels) and 2 annotations each; returns json bytes."""
    images_dir = folder / "images"
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    images, annotations = [], []
    for index in range(count):
        pixels = base.copy()
        pixels[0, :4] = np.frombuffer(index.to_bytes(12, "little"), dtype=np.uint8).reshape(4, 3)
        name = f"{index:06d}.png"
        Image.fromarray(pixels).save(images_dir / name, compress_level=1)
        images.append({"id": index, "file_name": name, "width": WIDTH, "height": HEIGHT})
        for part in range(2):
            x = 2 + 10 * part
            annotations.append({"id": 2 * index + part, "image_id": index, "category_id": 1 + part, "iscrowd": 0,
                                "segmentation": [[x, 2, x + 8, 2, x + 8, 12, x, 12]], "bbox": [x, 2, 8, 10]})
    document = {"images": images, "annotations": annotations,
                "categories": [{"id": 1, "name": "left"}, {"id": 2, "name": "right"}]}
    raw = json.dumps(document).encode()
    (folder / "annotations.json").write_bytes(raw)
    return len(raw)


def run_child(mode: str, folder: Path) -> dict:
    completed = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO)), mode, str(folder)],
                               capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    sizes = [int(value) for value in sys.argv[1:]] or [5_000, 50_000]
    rows = []
    with tempfile.TemporaryDirectory(prefix="import-bench-") as temp:
        for count in sizes:
            folder = Path(temp) / f"coco-{count}"
            started = time.monotonic()
            json_bytes = write_dataset(folder, count)
            print(f"{count:,} images: dataset written in {time.monotonic() - started:.0f} s "
                  f"(json {json_bytes / 2**20:.1f} MB)", flush=True)
            loads = run_child("json.loads", folder)
            result = run_child("import", folder)
            rows.append((count, result, loads))
            print(f"  import: {result['seconds']:.0f} s, {result['images'] / result['seconds']:.0f} images/s, "
                  f"{result['annotations'] / result['seconds']:.0f} annotations/s, peak RSS +{result['peak_mb']:.0f} MB "
                  f"({result['images']:,} images, {result['annotations']:,} annotations, {result['skipped']} skipped)")
            print(f"  json.loads of the same file alone: peak RSS +{loads['peak_mb']:.0f} MB", flush=True)
    if len(rows) >= 2:
        (small, small_result, _), (large, large_result, _) = rows[0], rows[-1]
        print(f"\n{large / small:.0f}x the images: import peak RSS x{large_result['peak_mb'] / max(small_result['peak_mb'], 1):.2f}, "
              f"throughput x{(large_result['images'] / large_result['seconds']) / (small_result['images'] / small_result['seconds']):.2f}")


if __name__ == "__main__":
    main()
