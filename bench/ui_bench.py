"""Server-side latency of the studio's interactive handlers, tiny SAM3 on CPU.

  find_all_uncached  annotate_proposals.find_all with the backbone cache cleared (the ViT runs),
                     incl. replacing the image's previous proposals and rendering
  find_all_cached    the same call again on that image (backbone from studio.models.cache)
  save_mask          annotate_edits.save_mask of an edited editor layer (mask -> RLE, revisioned save, render)
  curve_tick_idle    train_handlers.tick with no new metric rows (the 1 s timer while nothing changed)
  curve_tick_new     train_handlers.tick after 12 new rows (one logged step's terms)
  curve_first_load   train_handlers.show_project of a job with `--rows` rows (a page reload)

Each is the median of `--repeats` calls, in milliseconds; the ratios compare runs made
in this one process. Handlers are called as gradio calls them, without the browser.

Then the Annotate round trips before / after issue 16 in one table (bench/ui_roundtrips.py:
server-side p95 of select / accept / save / next image, Chromium click-to-visible p95,
and Find all with --sessions sessions at once), with the targets.

Usage: .venv/bin/python bench/ui_bench.py [--images 10] [--repeats 10] [--rows 6000] [--sessions 10] [--clicks 10]
"""
from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from app.jobs.lifecycle import create_job
from app.jobs.metrics import MetricWriter
from app.settings import Settings
from app.store import projects
from app.store.coco_export import dataset_snapshot
from app.store.uploads import ingest_files
from app.studio import open_studio
from app.ui import annotate_edits, annotate_navigation, annotate_proposals, train_handlers
from app.ui.annotate_view import VIEW_OUTPUTS, new_session
from app.ui.curves import CURVE_TERMS
from app.ui.train_handlers import VIEW_OUTPUTS as VIEW
from sam3_lora.tiny import save_tiny_sam3

TERMS = ["loss", "loss_bbox", "loss_giou", "loss_ce", "loss_presence", "loss_mask", "loss_dice"]


def png(seed: int, size=(640, 480)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def timed(function, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return (time.perf_counter() - started) * 1000, result


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples)


def outputs(result: tuple) -> dict:
    return dict(zip(VIEW_OUTPUTS, result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10, help="images to run Find all on (uncached, then cached)")
    parser.add_argument("--sessions", type=int, default=10, help="sessions pressing Find all at once (load benchmark)")
    parser.add_argument("--clicks", type=int, default=10, help="table-row clicks timed in Chromium")
    parser.add_argument("--repeats", type=int, default=10, help="mask saves and curve ticks to time")
    parser.add_argument("--rows", type=int, default=6000, help="metric rows of the job whose curve is loaded")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ui-bench-"))
    studio = open_studio(Settings(DATA_DIR=root / "data", SAM3_MODEL=str(save_tiny_sam3(root / "tiny"))))
    project = projects.create_project(studio.engine, "Bench")
    concept = projects.add_concept(studio.engine, project.id, "crack")
    report = ingest_files(studio.engine, studio.media_dir, project.id,
                          [(f"img{i}.png", png(i)) for i in range(args.images)], max_bytes=50_000_000)
    image_ids = [image_id for _, image_id in report.accepted]
    studio.models.status()  # load once, outside the timings

    threshold = 0.0  # every query becomes a proposal: the most work per call
    session = outputs(annotate_navigation.open_project(studio, new_session(), threshold, project.id))["session"]
    uncached, cached, saves = [], [], []
    for image_id in image_ids:  # every image gets proposals first, so each timed call replaces as many rows
        session = outputs(annotate_navigation.open_image(studio, session, threshold, image_id))["session"]
        session = outputs(annotate_proposals.find_all(studio, session, threshold, "base", concept.id))["session"]
    for image_id in image_ids:
        session = outputs(annotate_navigation.open_image(studio, session, threshold, image_id))["session"]
        studio.models.cache.clear()
        elapsed, result = timed(annotate_proposals.find_all, studio, session, threshold, "base", concept.id)
        uncached.append(elapsed)
        session = outputs(result)["session"]
        elapsed, result = timed(annotate_proposals.find_all, studio, session, threshold, "base", concept.id)
        cached.append(elapsed)
        session = outputs(result)["session"]
    for _ in range(args.repeats):
        view = outputs(annotate_proposals.find_all(studio, session, threshold, "base", concept.id))
        session = view["session"]
        editor = view["editor"]
        value = editor.get("value", editor) if isinstance(editor, dict) else editor
        layer = np.array(value["layers"][0], copy=True)
        layer[100:140, 100:300, 3] = 255  # a brush stroke
        elapsed, result = timed(annotate_edits.save_mask, studio, session, threshold,
                                {**value, "layers": [layer]}, concept.id)
        saves.append(elapsed)
        session = outputs(result)["session"]

    job = create_job(studio.engine, project.id, {"schedule": {"max_steps": args.rows}},
                     dataset_snapshot(studio.engine, project.id))
    steps = args.rows // (2 * len(TERMS))
    with MetricWriter(studio.engine, job.id) as writer:
        writer.add([{"step": step, "split": "train", "name": name, "value": 1.0 / step}
                    for step in range(1, steps + 1) for name in TERMS])
    terms = list(CURVE_TERMS)
    first_load, loaded = timed(train_handlers.show_project, studio, project.id, None, terms)
    view = loaded[2 + VIEW.index("view")]  # show_project returns (summary, message, *job view)
    idle, fresh = [], []
    for repeat in range(args.repeats):
        elapsed, result = timed(train_handlers.tick, studio, project.id, job.id, view, terms)
        idle.append(elapsed)
        view = result[VIEW.index("view")]
        step = steps + repeat + 1
        with MetricWriter(studio.engine, job.id) as writer:
            writer.add([{"step": step, "split": split, "name": name, "value": 0.5}
                        for split in ("train", "val") for name in TERMS[:6]])
        elapsed, result = timed(train_handlers.tick, studio, project.id, job.id, view, terms)
        fresh.append(elapsed)
        view = result[VIEW.index("view")]

    results = {
        "find_all_uncached": median_ms(uncached), "find_all_cached": median_ms(cached), "save_mask": median_ms(saves),
        "curve_tick_idle": median_ms(idle), "curve_tick_new": median_ms(fresh), "curve_first_load": first_load,
    }
    print(f"tiny SAM3 on CPU, {args.images} images 640x480, threshold 0, {args.rows} metric rows")
    for name, value in results.items():
        print(f"  {name:<18} {value:8.1f} ms")
    print(f"  ratio find_all uncached / cached: {results['find_all_uncached'] / results['find_all_cached']:.2f}")
    print(f"  ratio curve first load / idle tick: {results['curve_first_load'] / results['curve_tick_idle']:.1f}")
    print(f"  backbone cache: {studio.models.cache.hits} hits, {studio.models.cache.misses} misses")
    roundtrips_table(studio, project.id, concept.id, image_ids, args)


def roundtrips_table(studio, project_id: int, concept_id: int, image_ids: list[int], args) -> None:
    """Before / after issue 16 in one run (bench/ui_roundtrips.py), printed with the targets."""
    import ui_roundtrips as trips

    rows: dict[str, dict[str, float]] = {}
    for label, old in (("before", True), ("after", False)):
        with trips.old_code_path(old):
            measured = trips.server_side(studio, project_id, concept_id, image_ids, args.repeats)
            demo, url = trips.serve(studio)
            try:
                measured["chromium click->visible"] = trips.chromium_clicks(url, args.clicks)
                p50, p95, alone = trips.load(studio, project_id, image_ids, concept_id, args.sessions, old)
                measured.update({f"find all x{args.sessions} p50": p50, f"find all x{args.sessions} p95": p95,
                                 "find all alone": alone})
            finally:
                demo.close()
        rows[label] = measured
    targets = {"select": 250, "accept": 250, "save": 250, "next image": 250, "chromium click->visible": 600}
    print(f"\nAnnotate round trips, p95 ms (server-side = handler + gradio postprocess; 640x480 images)")
    print(f"  {'':<26}{'before':>10}{'after':>10}{'target':>10}")
    for name in rows["after"]:
        target = f"< {targets[name]}" if name in targets else ""
        print(f"  {name:<26}{rows['before'][name]:>10.1f}{rows['after'][name]:>10.1f}{target:>10}")


if __name__ == "__main__":
    main()
