"""Images per second of the pre-label job (issue 17).

CPU half (`main`): the whole job path in this process on the tiny SAM3 (112 px): a store
(SQLite file) with N synthetic images and two concepts, a claimed pre-label job, and
worker.run_prelabel.run_prelabel: image load, the batched model pass, one transaction per
image (proposals + mark, synchronous=FULL), heartbeat. Printed for image_batch 1 and 4,
with the ratio, and the model pass alone (propose_batch) for comparison.

GPU half (`gpu_prelabel_bench`, for bench/gpu_suite.py): the full-size SAM3 (`Sam3Config()`
defaults, 1008 px, random weights, no download) through propose_batch, the pre-label job's
model pass, at several image batches and dtypes: images/s with 8 concepts per image.
Random weights and score_threshold 0 give meaningless masks but the worst-case compute
(every query upsampled and NMS-ed).

Usage: .venv/bin/python bench/prelabel_bench.py [--images 40] [--threads 1]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sam3_lora.predict import load_predictor
from sam3_lora.predict_batch import propose_batch

PHRASES = ["cat", "dog", "red car", "person", "bicycle", "traffic light", "tree", "building"]


def _store_with_images(data_dir: Path, num_images: int, model_dir: Path):
    """(settings, engine, project_id) with num_images synthetic 112 px images, all unlabelled."""
    from sqlmodel import SQLModel

    from app.settings import Settings
    from app.store.db import make_engine
    from app.store.projects import add_concept, create_project
    from app.store.uploads import ingest_files
    from sam3_lora.synthetic import write_synthetic_coco

    settings = Settings(DATA_DIR=data_dir, SAM3_MODEL=str(model_dir))
    settings.media_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    SQLModel.metadata.create_all(engine)
    project = create_project(engine, "bench")
    for name in ("circle", "square"):
        add_concept(engine, project.id, name)
    coco = write_synthetic_coco(data_dir / "synthetic", num_images=num_images, image_size=112, seed=1)
    files = [(path.name, path.read_bytes()) for path in sorted((coco.parent / "images").iterdir())]
    ingest_files(engine, settings.media_dir, project.id, files, max_bytes=10 << 20)
    return settings, engine, project.id


def job_images_per_s(num_images: int = 40, image_batch: int = 4, threshold: float = 0.3,
                     device: str = "cpu") -> float:
    """Images/s of one pre-label job on the tiny SAM3, the whole job path (module docstring)."""
    from app.jobs.lifecycle import claim_job, get_job
    from app.jobs.prelabel import submit_prelabel
    from sam3_lora.tiny import save_tiny_sam3
    from worker.run_prelabel import run_prelabel

    with tempfile.TemporaryDirectory() as folder:
        model_dir = save_tiny_sam3(Path(folder) / "tiny")
        settings, engine, project_id = _store_with_images(Path(folder) / "data", num_images, model_dir)
        job = submit_prelabel(engine, project_id, lambda job_id: None, model_source=str(model_dir),
                              threshold=threshold, image_batch=image_batch, device=device)
        claim_job(engine, job.id, "bench")
        start = time.perf_counter()
        state = run_prelabel(engine, settings, get_job(engine, job.id))
        elapsed = time.perf_counter() - start
        engine.dispose()
    assert state == "succeeded", state
    return num_images / elapsed  # includes loading the tiny model (~0.1 s), as a job does


def model_images_per_s(model: torch.nn.Module, tokenizer, image_size: int, image_batch: int, phrases: list[str],
                       batches: int = 3, threshold: float = 0.0) -> float:
    """Images/s of propose_batch alone (after one warm-up batch), CUDA synchronised."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8) for _ in range(image_batch)]
    cuda = next(model.parameters()).device.type == "cuda"
    propose_batch(model, tokenizer, images, phrases, score_threshold=threshold)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        propose_batch(model, tokenizer, images, phrases, score_threshold=threshold)
    if cuda:
        torch.cuda.synchronize()
    return batches * image_batch / (time.perf_counter() - start)


def gpu_prelabel_bench(image_batches: tuple[int, ...] = (1, 4, 8), dtypes: tuple[torch.dtype, ...] = (torch.bfloat16,),
                       batches: int = 3, concepts: int = 8) -> dict[str, float]:
    """Full-size SAM3 (random weights) on CUDA: {"<dtype> batch <b>": images/s} of the pre-label model pass
    with `concepts` phrases per image. For bench/gpu_suite.py; needs a GPU."""
    from transformers import Sam3Config, Sam3Model

    from sam3_lora.tiny import build_tiny_tokenizer

    if not torch.cuda.is_available():
        raise RuntimeError("gpu_prelabel_bench needs CUDA")
    tokenizer = build_tiny_tokenizer()  # token ids < its vocabulary, valid for the full-size text encoder too
    results = {}
    for dtype in dtypes:
        with torch.device("cuda"):  # initialised on the GPU: no 3.4 GB trip through host memory
            model = Sam3Model(Sam3Config()).to(dtype=dtype).eval()
        for image_batch in image_batches:
            rate = model_images_per_s(model, tokenizer, 1008, image_batch, PHRASES[:concepts], batches)
            results[f"{str(dtype).removeprefix('torch.')} batch {image_batch}"] = rate
            print(f"full-size SAM3 {dtype} image_batch {image_batch}: {rate:.2f} images/s ({concepts} concepts)")
        del model
        torch.cuda.empty_cache()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: comparable on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rates = {batch: job_images_per_s(args.images, image_batch=batch) for batch in (1, 4)}
    for batch, rate in rates.items():
        print(f"pre-label job, tiny SAM3 on CPU, image_batch {batch}: {rate:.1f} images/s ({args.images} images, 2 concepts)")
    print(f"ratio image_batch 4 / 1: {rates[4] / rates[1]:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        from sam3_lora.tiny import save_tiny_sam3

        model, tokenizer = load_predictor(save_tiny_sam3(Path(folder) / "tiny"))
    for batch in (1, 4):
        rate = model_images_per_s(model, tokenizer, 112, batch, ["circle", "square"], batches=10, threshold=0.3)
        print(f"model pass alone (propose_batch), tiny SAM3 on CPU, image_batch {batch}: {rate:.1f} images/s")
    if torch.cuda.is_available():
        gpu_prelabel_bench()


if __name__ == "__main__":
    main()
