"""Store latency at gallery scale: annotation saves and deep gallery pages on SQLite.

Builds a SQLite file (WAL, synchronous=FULL: the studio's settings) in a temp dir with
10,000 images and 100,000 annotations (bulk insert), then times
  - save_annotation: ~300 saves (half new, half edits at the current revision),
  - image_page: pages of 48 tiles at offsets deep in the gallery, unfiltered and by status,
and prints median / p95 next to the targets (save p95 < 50 ms, page < 100 ms).
Run: .venv/bin/python bench/store_bench.py
"""
from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.store.annotations import check_mask, save_annotation  # noqa: E402
from app.store.db import make_engine  # noqa: E402
from app.store.migrate import upgrade_database  # noqa: E402
from app.store.models import Annotation, AnnotationHistory, Concept, Image, Project, utcnow  # noqa: E402
from app.store.projects import image_page  # noqa: E402

NUM_IMAGES = 10_000
NUM_ANNOTATIONS = 100_000
NUM_SAVES = 300
NUM_PAGES = 100
PAGE_SIZE = 48
HEIGHT, WIDTH = 480, 640
SAVE_P95_TARGET_MS = 50.0
PAGE_TARGET_MS = 100.0


def random_box_rle(rng: random.Random) -> dict:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    top, left = rng.randrange(HEIGHT - 60), rng.randrange(WIDTH - 60)
    mask[top:top + rng.randrange(5, 60), left:left + rng.randrange(5, 60)] = 1
    rle = coco_mask.encode(np.asfortranarray(mask))
    return {"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode("ascii")}


def build_database(url: str, rng: random.Random) -> tuple[int, list[int], list[tuple[int, int]]]:
    """Bulk-insert the project; returns (project_id, concept_ids, [(live annotation_id, its image_id)])."""
    upgrade_database(url)
    engine = make_engine(url)
    masks = [check_mask(random_box_rle(rng)) for _ in range(64)]
    now = utcnow()
    statuses = ("unlabelled", "proposed", "reviewed")
    with engine.begin() as connection:
        project_id = connection.execute(insert(Project).values(name="bench", created_at=now)).inserted_primary_key[0]
        connection.execute(insert(Concept), [
            {"project_id": project_id, "name": f"concept {i}", "color": "#e6194b", "created_at": now} for i in range(5)])
        connection.execute(insert(Image), [
            {"project_id": project_id, "sha256": f"{i:064x}", "width": WIDTH, "height": HEIGHT, "split": "train",
             "status": statuses[i % 3], "path": f"images/{i}.png", "original_name": f"{i}.jpg", "created_at": now}
            for i in range(NUM_IMAGES)])
        image_ids = [row[0] for row in connection.exec_driver_sql("SELECT id FROM image ORDER BY id")]
        concept_ids = [row[0] for row in connection.exec_driver_sql("SELECT id FROM concept ORDER BY id")]
        annotations = []
        for i in range(NUM_ANNOTATIONS):
            mask = masks[i % len(masks)]
            annotations.append({
                "image_id": image_ids[i % NUM_IMAGES], "concept_id": concept_ids[i % 5], "rle": mask.rle_json,
                "bbox": mask.bbox_json, "area": mask.area, "iscrowd": False, "source": "human", "score": None,
                "revision": 1, "deleted": i % 10 == 0, "updated_at": now})
        connection.execute(insert(Annotation), annotations)
        annotation_ids = [row[0] for row in connection.exec_driver_sql("SELECT id FROM annotation ORDER BY id")]
        connection.execute(insert(AnnotationHistory), [
            {"annotation_id": annotation_id, "revision": 1, "outcome": "saved", "concept_id": row["concept_id"],
             "rle": row["rle"], "bbox": row["bbox"], "source": "human", "score": None, "deleted": row["deleted"],
             "author": "bench", "saved_at": now}
            for annotation_id, row in zip(annotation_ids, annotations)])
    engine.dispose()
    live = [(annotation_id, row["image_id"]) for annotation_id, row in zip(annotation_ids, annotations) if not row["deleted"]]
    return project_id, concept_ids, live


def milliseconds(samples: list[float]) -> tuple[float, float]:
    """(median, p95) of durations in seconds, in milliseconds."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1e3


def report(label: str, samples: list[float], target_ms: float, judged_on: str) -> None:
    median, p95 = milliseconds(samples)
    judged = p95 if judged_on == "p95" else median
    verdict = "ok" if judged < target_ms else "OVER TARGET"
    print(f"{label:<34} median {median:7.2f} ms   p95 {p95:7.2f} ms   target {judged_on} < {target_ms:.0f} ms"
          f"   ratio {judged / target_ms:5.2f}  {verdict}")


def main() -> None:
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="store-bench-") as folder:
        url = f"sqlite:///{Path(folder) / 'studio.db'}"
        started = time.perf_counter()
        project_id, concept_ids, live_annotations = build_database(url, rng)
        print(f"built {NUM_IMAGES} images, {NUM_ANNOTATIONS} annotations (+ history) in {time.perf_counter() - started:.1f} s")
        engine = make_engine(url)
        new_masks = [random_box_rle(rng) for _ in range(16)]
        image_ids = sorted({image_id for _, image_id in live_annotations})

        save_times, edited = [], {}
        for i in range(NUM_SAVES):
            rle = new_masks[i % len(new_masks)]
            started = time.perf_counter()
            if i % 2:  # an edit of an existing live annotation at its current revision
                annotation_id, image_id = rng.choice(live_annotations)
                saved = save_annotation(engine, image_id=image_id, concept_id=concept_ids[0], rle=rle,
                                        annotation_id=annotation_id,
                                        base_revision=edited.get(annotation_id, 1))
                edited[annotation_id] = saved.revision
            else:
                save_annotation(engine, image_id=rng.choice(image_ids), concept_id=rng.choice(concept_ids), rle=rle)
            save_times.append(time.perf_counter() - started)

        page_times, filtered_times = [], []
        for _ in range(NUM_PAGES):
            offset = rng.randrange(NUM_IMAGES - 1000, NUM_IMAGES - PAGE_SIZE)
            started = time.perf_counter()
            rows = image_page(engine, project_id, offset=offset, limit=PAGE_SIZE)
            page_times.append(time.perf_counter() - started)
            assert len(rows) == PAGE_SIZE and sum(row.annotation_count for row in rows) > 0
            started = time.perf_counter()
            image_page(engine, project_id, offset=offset // 3, limit=PAGE_SIZE, status="reviewed")
            filtered_times.append(time.perf_counter() - started)
        engine.dispose()

    print(f"database: SQLite WAL synchronous=FULL, {NUM_SAVES} saves, {NUM_PAGES} pages of {PAGE_SIZE} per kind")
    report("save_annotation (new + edit)", save_times, SAVE_P95_TARGET_MS, "p95")
    report("image_page, offset 9000-9950", page_times, PAGE_TARGET_MS, "p95")
    report("image_page status=reviewed, deep", filtered_times, PAGE_TARGET_MS, "p95")
    print(json.dumps({"save_ms": milliseconds(save_times), "page_ms": milliseconds(page_times),
                      "filtered_page_ms": milliseconds(filtered_times)}))


if __name__ == "__main__":
    main()
