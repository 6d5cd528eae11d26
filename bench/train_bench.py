"""Throughput of one LoRA training step (sam3_lora.train.train_step): steps/s and images/s.

CPU: the tiny SAM3 (sam3_lora.tiny) at 112 px, decoder and full presets, fp32.
CUDA (when a GPU is present): the full-size SAM3 (transformers.Sam3Config() defaults,
random weights) at 1008 px, decoder and full presets, fp32 and bf16 autocast in the
same run, with peak GPU memory and model FLOPs utilisation:

    MFU = FLOPs of one step / step time / peak FLOP/s of the GPU for that dtype

The FLOPs of a step are counted by torch.utils.flop_counter.FlopCounterMode over the
forward (under the same autocast) and the backward: what this LoRA step really
computes (frozen weights get no weight-gradient matmuls). Peak FLOP/s are the dense
datasheet numbers (bf16 tensor cores; fp32 without TF32, torch's default for matmul);
pass --peak-tflops-bf16 / --peak-tflops-fp32 for a GPU not in PEAK_TFLOPS. A step is the whole train_step: forward with
per-layer outputs, Hungarian matching, the SAM3 criterion, backward, clip, AdamW.

Run: python bench/train_bench.py [--steps 20] [--gpu-batch-size 2]
Timings go here, never into tests.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Sam3Config, Sam3Model

from sam3_lora.data import FindQueryDataset, build_loader
from sam3_lora.layer_outputs import forward_with_layer_outputs
from sam3_lora.lora import LoraSettings, apply_lora
from sam3_lora.losses import build_criterion, compute_num_boxes
from sam3_lora.model import load_sam3
from sam3_lora.synthetic import write_synthetic_coco
from sam3_lora.tiny import build_tiny_tokenizer, save_tiny_sam3
from sam3_lora.train import train_step

# Dense peak TFLOP/s by device-name fragment: (bf16 tensor core, fp32 without TF32). NVIDIA datasheets.
PEAK_TFLOPS = {
    "H200": (989.0, 67.0),
    "H100 PCIe": (756.0, 51.0),
    "H100": (989.0, 67.0),  # SXM
    "A100": (312.0, 19.5),
    "L40S": (362.0, 91.6),
    "A10G": (70.0, 31.2),
    "RTX 4090": (165.0, 82.6),
}
GPU_IMAGE_SIZE = 1008


def make_batches(folder: Path, tokenizer, image_size: int, batch_size: int, count: int) -> list[dict]:
    """`count` collated find-query batches of a synthetic single-scale set at `image_size`."""
    annotations = write_synthetic_coco(folder, num_images=max(count * batch_size, 4), image_size=image_size)
    dataset = FindQueryDataset(annotations, folder / "images", tokenizer, image_size, negatives_per_image=1)
    loader = build_loader(dataset, batch_size, shuffle=False, seed=0)
    return [batch for batch, _ in zip(loader, range(count))]


def time_steps(model, batches: list[dict], device: torch.device, dtype: torch.dtype, steps: int, warmup: int) -> float:
    """Seconds per train_step, mean over `steps` after `warmup` untimed ones."""
    criterion = build_criterion()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    model.train()
    started = 0.0
    for index in range(warmup + steps):
        if index == warmup:
            _synchronize(device)
            started = time.perf_counter()
        train_step(model, criterion, optimizer, scaler, [batches[index % len(batches)]], device, dtype, 0.1, index + 1)
    _synchronize(device)
    return (time.perf_counter() - started) / steps


def step_flops(model, batch: dict, device: torch.device, dtype: torch.dtype) -> int:
    """FLOPs of forward + backward of one batch (the optimiser step is negligible next to them)."""
    criterion = build_criterion()
    targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in batch["targets"]]
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            outputs = forward_with_layer_outputs(model, batch["pixel_values"].to(device), batch["input_ids"].to(device),
                                                 batch["attention_mask"].to(device))
        losses = criterion(outputs, targets, compute_num_boxes(targets, device))
        losses["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def peak_flops(dtype: torch.dtype, override_tflops: dict[str, float | None]) -> float | None:
    """Peak FLOP/s of this GPU for `dtype`: the override, else the table, else None (unknown GPU)."""
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    if override_tflops.get(name) is not None:
        return override_tflops[name] * 1e12
    device_name = torch.cuda.get_device_name()
    for fragment, (bf16, fp32) in PEAK_TFLOPS.items():  # "H100 PCIe" is listed before "H100"
        if fragment in device_name:
            return (bf16 if name == "bf16" else fp32) * 1e12
    return None


def bench_cpu(steps: int, batch_size: int) -> None:
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        tiny_dir = save_tiny_sam3(folder / "tiny")
        _, tokenizer = load_sam3(tiny_dir)
        batches = make_batches(folder / "data", tokenizer, 112, batch_size, count=8)
        print(f"CPU ({torch.get_num_threads()} threads), tiny SAM3, 112 px, batch {batch_size}, fp32")
        seconds = {}
        for preset in ("decoder", "full"):
            base, _ = load_sam3(tiny_dir)
            model = apply_lora(base, LoraSettings(components=preset, rank=16, alpha=32.0))
            seconds[preset] = time_steps(model, batches, device, torch.float32, steps, warmup=3)
            print(f"  {preset:<8} {1 / seconds[preset]:7.2f} steps/s  {batch_size / seconds[preset]:7.1f} images/s")
        print(f"  full / decoder step time: {seconds['full'] / seconds['decoder']:.2f}x")


def bench_cuda(steps: int, batch_size: int, override_tflops: dict[str, float | None]) -> None:
    device = torch.device("cuda")
    tokenizer = build_tiny_tokenizer()  # random weights: any ids below the real vocab size will do
    with tempfile.TemporaryDirectory() as folder:
        batches = make_batches(Path(folder), tokenizer, GPU_IMAGE_SIZE, batch_size, count=4)
    print(f"CUDA {torch.cuda.get_device_name()}, full-size SAM3 (Sam3Config() defaults, random weights), "
          f"{GPU_IMAGE_SIZE} px, batch {batch_size}")
    for preset in ("decoder", "full"):
        torch.manual_seed(0)
        with torch.device(device):  # build on the GPU: initialising 840M parameters on the CPU is slow
            base = Sam3Model(Sam3Config())
        model = apply_lora(base, LoraSettings(components=preset, rank=16, alpha=32.0))
        images_per_s = {}
        for dtype in (torch.float32, torch.bfloat16):  # fp32 master weights, bf16 autocast: as train() does
            name = "bf16" if dtype == torch.bfloat16 else "fp32"
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            try:
                seconds = time_steps(model, batches, device, dtype, steps, warmup=3)
            except torch.cuda.OutOfMemoryError:
                print(f"  {preset:<8} {name}  out of GPU memory at batch {batch_size}; try --gpu-batch-size 1")
                model.zero_grad(set_to_none=True)
                continue
            peak_gib = torch.cuda.max_memory_allocated() / 2**30
            flops = step_flops(model, batches[0], device, dtype)
            peak = peak_flops(dtype, override_tflops)
            mfu = f"{flops / seconds / peak:6.1%}" if peak else "n/a (unknown GPU; pass --peak-tflops-*)"
            images_per_s[name] = batch_size / seconds
            print(f"  {preset:<8} {name}  {images_per_s[name]:7.2f} images/s  peak memory {peak_gib:6.1f} GiB  "
                  f"{flops / 1e12:7.2f} TFLOP/step  MFU {mfu}")
        del model, base
        torch.cuda.empty_cache()
        if len(images_per_s) == 2:
            print(f"  {preset:<8} bf16 / fp32 images/s: {images_per_s['bf16'] / images_per_s['fp32']:.2f}x")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--batch-size", type=int, default=4, help="find-queries per step on CPU")
    parser.add_argument("--gpu-batch-size", type=int, default=2, help="find-queries per step at 1008 px on CUDA")
    parser.add_argument("--peak-tflops-bf16", type=float, help="dense bf16 peak TFLOP/s of the GPU (for MFU)")
    parser.add_argument("--peak-tflops-fp32", type=float, help="fp32 (no TF32) peak TFLOP/s of the GPU (for MFU)")
    parser.add_argument("--cpu-only", action="store_true", help="skip the CUDA part")
    args = parser.parse_args()
    bench_cpu(args.steps, args.batch_size)
    if torch.cuda.is_available() and not args.cpu_only:
        bench_cuda(args.steps, args.gpu_batch_size, {"bf16": args.peak_tflops_bf16, "fp32": args.peak_tflops_fp32})
    else:
        print("no CUDA device: skipped the full-size SAM3 part")


if __name__ == "__main__":
    main()
