"""How much the backbone cache saves: backbone time vs per-prompt time with the backbone cached.

  backbone       = vision_features() without cache (the ViT + FPN neck)
  prompt_cached  = predict() on an image whose features are cached (text encoder, DETR, mask head, post-processing)
  prompt_many    = predict_many() of 8 phrases on a cached image, per phrase
  ratio          = backbone / prompt_cached: how many extra prompts cost one backbone pass

Runs the tiny SAM3 (112 px) on CPU, and, when CUDA is available, the full-size SAM3
(`Sam3Config()` defaults, 1008 px, random weights, no download) on the GPU in
float32 and bfloat16. Random weights give meaningless masks but the real compute;
score_threshold 0 makes every query go through mask upsampling and NMS (the worst
case); the default 0.5 keeps almost none of a random model's queries.

Usage: .venv/bin/python bench/predict_bench.py [--repeats 20] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from transformers import Sam3Config, Sam3Model

from sam3_lora.predict import BackboneCache, predict, predict_many, vision_features
from sam3_lora.preprocess import image_to_tensor
from sam3_lora.tiny import build_tiny_tokenizer, tiny_sam3_config

PHRASES = ["cat", "dog", "red car", "person", "bicycle", "traffic light", "tree", "building"]


def timed(run, repeats: int, device: torch.device) -> tuple[float, float]:
    """(min, median) wall time of run() over `repeats` calls after 2 warm-up calls (CUDA synchronised).

    The minimum is the figure to compare on a shared CPU: other processes only ever add time.
    """
    times = []
    for index in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= 2:
            times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def bench(name: str, model: Sam3Model, tokenizer, image: np.ndarray, repeats: int) -> None:
    device = model.device
    pixels = image_to_tensor(image)
    cache = BackboneCache()

    def backbone():
        with torch.inference_mode():
            vision_features(model, pixels, cache=None)

    backbone_s = timed(backbone, repeats, device)
    rows = [("backbone", backbone_s)]
    for threshold in (0.5, 0.0):
        rows.append((f"prompt_cached@{threshold}", timed(
            lambda: predict(model, tokenizer, image, "cat", score_threshold=threshold, cache=cache), repeats, device)))
        rows.append((f"prompt_uncached@{threshold}", timed(
            lambda: predict(model, tokenizer, image, "cat", score_threshold=threshold), repeats, device)))
    many_s = timed(lambda: predict_many(model, tokenizer, image, PHRASES, cache=cache), repeats, device)
    rows.append(("prompt_many@0.5 (per phrase)", tuple(t / len(PHRASES) for t in many_s)))

    print(f"\n## {name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"input {model.config.vision_config.backbone_config.image_size} px, image {image.shape[1]}x{image.shape[0]}, "
          f"{model.config.detr_decoder_config.num_queries} queries, {device}, {model.dtype}")
    print(f"{'':32s} {'min ms':>9s} {'median ms':>10s}   backbone / this (min)")
    for label, (fastest, median) in rows:
        print(f"{label:32s} {fastest * 1e3:9.2f} {median * 1e3:10.2f}   {backbone_s[0] / fastest:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    # 1 by default: on a small shared CPU, 2 threads under contention made medians swing 10x (measured here)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()  # token ids < 514 are valid for the full 49408-token vocabulary too
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)

    tiny = Sam3Model(tiny_sam3_config(vocab_size=len(tokenizer))).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    bench("tiny SAM3 on CPU", tiny, tokenizer, image, args.repeats)

    if not torch.cuda.is_available():
        print("\nCUDA not available: full-size SAM3 (1008 px) skipped")
        return
    print(f"\nGPU: {torch.cuda.get_device_name()}")
    big_image = np.random.default_rng(1).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    with torch.device("cuda"):  # initialise the 840M parameters on the GPU directly
        full = Sam3Model(Sam3Config()).eval()
    bench("full-size SAM3, float32", full, tokenizer, big_image, args.repeats)
    bench("full-size SAM3, bfloat16", full.to(torch.bfloat16), tokenizer, big_image, args.repeats)


if __name__ == "__main__":
    main()
