"""Cost of the SAM3 loss (matcher + criterion) next to the model's forward + backward.

Criterion at SAM3's real output shapes, with synthetic output tensors: B find-queries,
Q = 200 queries, 6 decoder layers (5 aux), predicted masks 288 x 288, target masks
1008 x 1008, T in {1, 10, 50, 100} instances per find-query, mask losses at sampled
points (12,544 per mask) or at full resolution. Timed: criterion forward + backward
down to the output tensors (the matcher runs once per layer inside it).

Model forward + backward:
- on CUDA: a full-size SAM3 (~840M parameters, random weights: the same compute as
  facebook/sam3) at 1008 px, bf16 autocast, every parameter trainable;
- on CPU: the tiny SAM3 at 112 px (the real one takes minutes per step on CPU), and
  next to it the criterion at the tiny model's own output shapes (Q 10, masks
  32 -> 112), so the "share of a step" compares like with like.
Each case runs in a fresh process; peak memory is the CUDA peak allocation or, on
CPU, the growth of the peak RSS, over what the inputs already held.
Run: .venv/bin/python bench/loss_bench.py [--device cuda] [--counts 1 10 50 100]
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam3_lora.losses import build_criterion, compute_num_boxes  # noqa: E402

REAL = {"queries": 200, "layers": 6, "mask_size": 288, "image_size": 1008}
TINY = {"queries": 10, "layers": 2, "mask_size": 32, "image_size": 112}


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def synthetic_case(shape: dict, batch: int, count: int, device: str) -> tuple[dict, list[dict]]:
    """Output tensors of `shape` (leaves with gradients) and targets with `count` box-shaped masks each."""
    generator = torch.Generator().manual_seed(count)
    queries, size = shape["queries"], shape["image_size"]

    def layer() -> dict:
        boxes = torch.cat([torch.rand(batch, queries, 2, generator=generator) * 0.6 + 0.2,
                           torch.rand(batch, queries, 2, generator=generator) * 0.2 + 0.02], dim=-1)
        return {"pred_logits": torch.randn(batch, queries, generator=generator).to(device).requires_grad_(),
                "pred_boxes": boxes.to(device).requires_grad_(),
                "presence_logits": torch.randn(batch, 1, generator=generator).to(device).requires_grad_()}

    layers = [layer() for _ in range(shape["layers"])]
    masks = torch.randn(batch, queries, shape["mask_size"], shape["mask_size"], generator=generator)
    outputs = {**layers[-1], "pred_masks": masks.to(device).requires_grad_(), "aux_outputs": layers[:-1]}
    targets = []
    for _ in range(batch):
        boxes = torch.cat([torch.rand(count, 2, generator=generator) * 0.6 + 0.2,
                           torch.rand(count, 2, generator=generator) * 0.2 + 0.02], dim=-1)
        centres = (torch.arange(size) + 0.5) / size
        low, high = boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2
        inside_x = (centres[None] >= low[:, :1]) & (centres[None] <= high[:, :1])
        inside_y = (centres[None] >= low[:, 1:]) & (centres[None] <= high[:, 1:])
        targets.append({"boxes": boxes.to(device), "masks": (inside_y[:, :, None] & inside_x[:, None, :]).to(device)})
    return outputs, targets


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(step, device: str, repeats: int) -> tuple[float, float]:
    """(median seconds, peak MiB above the memory held before) of `step()` after one warm-up."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = max(current_rss_bytes(), peak_rss_bytes())
    step()  # warm-up: allocator, kernels, first-call caches
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss_bytes()
    return sorted(seconds)[len(seconds) // 2], max(peak - before, 0) / 2**20


def criterion_case(shape_name: str, batch: int, count: int, mask_mode: str, device: str, repeats: int):
    outputs, targets = synthetic_case(REAL if shape_name == "real" else TINY, batch, count, device)
    criterion = build_criterion(mask_mode=mask_mode)
    num_boxes = compute_num_boxes(targets, device)
    leaves = [value for value in outputs.values() if torch.is_tensor(value)]
    leaves += [value for layer in outputs["aux_outputs"] for value in layer.values()]

    def step() -> None:
        criterion(outputs, targets, num_boxes)["loss"].backward()
        for leaf in leaves:
            leaf.grad = None

    return measure(step, device, repeats)


def model_case(batch: int, device: str, repeats: int):
    from sam3_lora.model import tokenize_phrases
    from sam3_lora.tiny import build_tiny_tokenizer, save_tiny_sam3

    tokenizer = build_tiny_tokenizer()
    if device == "cuda":
        from transformers import Sam3Config, Sam3Model

        model = Sam3Model(Sam3Config()).to(device).train()
        size, dtype = 1008, torch.bfloat16
    else:
        from sam3_lora.model import load_sam3

        model, tokenizer = load_sam3(save_tiny_sam3(tempfile.mkdtemp()))
        model.train()
        size, dtype = TINY["image_size"], None
    pixels = torch.randn(batch, 3, size, size, device=device)
    tokens = tokenize_phrases(tokenizer, ["a red car"] * batch, device)

    def step() -> None:
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            outputs = model(pixel_values=pixels, **tokens)
        (outputs.pred_masks.float().mean() + outputs.pred_boxes.float().mean() + outputs.pred_logits.float().mean()).backward()
        model.zero_grad(set_to_none=True)

    return measure(step, device, repeats)


def in_fresh_process(function, *args):
    """Run one case in its own spawned process so its peak memory is its own."""
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        return pool.apply(function, args)
    finally:
        pool.close()
        pool.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 50, 100], help="instances per find-query")
    parser.add_argument("--batch", type=int, default=2, help="find-queries per batch")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device, batch = args.device, args.batch
    model_name = "full-size SAM3 @1008 bf16" if device == "cuda" else "tiny SAM3 @112 (CPU)"
    print(f"device {device}, {torch.get_num_threads()} threads, batch {batch} find-queries, repeats {args.repeats}")

    model_s, model_mib = in_fresh_process(model_case, batch, device, args.repeats)
    print(f"model forward+backward, {model_name}: {model_s * 1e3:.1f} ms, peak +{model_mib:.0f} MiB")

    if device == "cpu":
        print("\ncriterion at the tiny model's shapes (Q 10, 2 layers, masks 32 -> 112):")
        for mask_mode in ("points", "full"):
            for count in [c for c in args.counts if c <= TINY["queries"]]:
                seconds, mib = in_fresh_process(criterion_case, "tiny", batch, count, mask_mode, device, args.repeats)
                print(f"  {mask_mode:6s} T={count:3d}: {seconds * 1e3:7.1f} ms, peak +{mib:6.0f} MiB, "
                      f"share of a tiny step {seconds / (seconds + model_s):5.1%}")

    print(f"\ncriterion at SAM3's shapes (Q 200, 6 layers, masks 288 -> 1008){'' if device == 'cuda' else ', CPU'}:")
    print(f"  {'T':>4} {'points ms':>10} {'full ms':>10} {'points MiB':>11} {'full MiB':>10} {'full/points mem':>16}"
          + ("  share of step (points / full)" if device == "cuda" else ""))
    for count in args.counts:
        points_s, points_mib = in_fresh_process(criterion_case, "real", batch, count, "points", device, args.repeats)
        full_s, full_mib = in_fresh_process(criterion_case, "real", batch, count, "full", device, args.repeats)
        line = (f"  {count:4d} {points_s * 1e3:10.1f} {full_s * 1e3:10.1f} {points_mib:11.0f} {full_mib:10.0f} "
                f"{full_mib / max(points_mib, 1):15.1f}x")
        if device == "cuda":
            line += f"  {points_s / (points_s + model_s):5.1%} / {full_s / (full_s + model_s):5.1%}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
