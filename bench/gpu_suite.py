"""The GPU suite: one command, one table, for one H100/H200 in under 6 minutes.

    python bench/gpu_suite.py [--time-budget 330]      # a CUDA GPU, the real-size SAM3
    python bench/gpu_suite.py --tiny                    # CPU, the tiny SAM3 (the CI smoke test)

Per LoRA preset at its shipped settings (configs/quick.yaml = decoder, balanced.yaml,
full_lora.yaml: rank, dropout, batch size, ViT checkpointing), for mask_mode points
and full:
- images/s through the real `train()` (its DataLoader workers, pinned memory, one
  ViT pass per image, precision auto = bf16 on the GPU): the wall time between the
  "progress" events of steps 2..N, so data loading counts;
- MFU = FLOPs per image (torch FlopCounterMode over forward + backward of one
  micro-batch; the recompute of checkpointed ViT layers counts, as it is work the
  GPU does) x images/s / peak dense FLOP/s of the GPU (bf16 table below);
- peak GPU memory of that run (torch.cuda.max_memory_allocated);
- the largest batch (images) that fits: train_step at 1, 2, 4, ... images until
  out of memory, MAX_BATCH, or the time budget.
Then Find all on one image with 4 phrases (predict_many): uncached (backbone pass
included) and cached (BackboneCache hit), fp32 and bf16 weights; and the pre-label
job's model pass (propose_batch, 8 phrases per image, bench/prelabel_bench.py) in
images/s at image batches 1, 4 and 8 with the training precision.

The model is Sam3Model(Sam3Config()) with random weights (840M parameters, 1008 px),
saved and loaded through load_sam3 as the trainer does; the data is a synthetic set
of 1080p JPEGs, 2 concepts (2 instances each) + 2 negatives per image. Random weights
cost the same FLOPs as trained ones; the Hungarian matching sees random boxes.
A measurement that would pass the time budget is skipped and says so in the table.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_bench import write_jpeg_set  # noqa: E402  (bench/ is not a package)
from prelabel_bench import PHRASES as PRELABEL_PHRASES, model_images_per_s  # noqa: E402

from sam3_lora.config import TrainConfig  # noqa: E402
from sam3_lora.data import FindQueryDataset  # noqa: E402
from sam3_lora.grouped_forward import GroupedSam3, set_vit_checkpointing  # noqa: E402
from sam3_lora.image_groups import ImageGroupDataset, collate_image_groups  # noqa: E402
from sam3_lora.layer_outputs import forward_with_layer_outputs  # noqa: E402
from sam3_lora.lora import LoraSettings, apply_lora  # noqa: E402
from sam3_lora.losses import build_criterion, compute_num_boxes  # noqa: E402
from sam3_lora.model import load_sam3, model_image_size  # noqa: E402
from sam3_lora.predict import BackboneCache, predict_many  # noqa: E402
from sam3_lora.tiny import build_tiny_tokenizer, save_tiny_sam3  # noqa: E402
from sam3_lora.train import train, train_step  # noqa: E402
from sam3_lora.train_step import batch_inputs  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESET_FILES = {"decoder": "quick.yaml", "balanced": "balanced.yaml", "full": "full_lora.yaml"}
MASK_MODES = ("points", "full")
# Dense bf16 tensor-core peak TFLOP/s by device-name fragment (NVIDIA datasheets; SXM unless named).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
MAX_BATCH = 64
FIND_ALL_RESERVE_S = 40.0
GIB = 2**30


class Budget:
    """Seconds left of --time-budget; `allows(s)` says whether a piece expected to take s seconds still fits."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, seconds: float) -> bool:
        return self.left() > seconds


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_bf16_flops() -> float | None:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return next((tflops * 1e12 for fragment, tflops in PEAK_BF16_TFLOPS.items() if fragment in name), None)


def preset_config(preset: str, mask_mode: str, model_dir: Path, annotations: Path, output_dir: Path,
                  device: str, steps: int) -> TrainConfig:
    """The shipped preset file with the model, data and run length of this suite (and `mask_mode`)."""
    values = yaml.safe_load((CONFIGS / PRESET_FILES[preset]).read_text())
    values["model"] = {"source": str(model_dir)}
    values["data"].update({"train_annotations": str(annotations), "train_images": str(annotations.parent / "images"),
                           "val_fraction": 0.0})
    values["data"].pop("val_annotations", None), values["data"].pop("val_images", None)
    values["optim"]["grad_accumulation"] = 1  # a step per micro-batch: more timed points in the budget
    values["schedule"] = {"max_steps": steps, "warmup_steps": 0}
    values["loss"] = {**(values.get("loss") or {}), "mask_mode": mask_mode}
    if mask_mode == "full":
        values["loss"].pop("num_points", None)
    values.update({"device": device, "gpus": 1, "eval_every": 0, "checkpoint_every": 0, "log_every": 1,
                   "output_dir": str(output_dir), "resume": None, "precision": "auto"})
    return TrainConfig.from_dict(values)


def train_images_per_s(cfg: TrainConfig, device: torch.device) -> tuple[float, float]:
    """(images/s over steps 2..N of train(), peak GPU GiB or nan on CPU)."""
    stamps: list[float] = []

    def on_event(event: dict) -> None:
        if event["type"] == "progress":
            synchronize(device)
            stamps.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    train(cfg, on_event)
    peak = torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else float("nan")
    images = (len(stamps) - 1) * cfg.data.batch_size
    return images / (stamps[-1] - stamps[0]), peak


def grouped_model(model_dir: Path, cfg: TrainConfig, device: torch.device) -> GroupedSam3:
    base, _ = load_sam3(model_dir, device=device)
    model = apply_lora(base, LoraSettings(components=cfg.lora.preset, rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                                          dropout=cfg.lora.dropout))
    set_vit_checkpointing(model, cfg.checkpoint_vision)
    return GroupedSam3(model).train()


def flops_per_image(model: GroupedSam3, criterion, batch: dict, device: torch.device, dtype: torch.dtype) -> float:
    """FLOPs of forward + backward of `batch` / its images."""
    targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in batch["targets"]]
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            outputs = forward_with_layer_outputs(model, *batch_inputs(batch, device))
        criterion(outputs, targets, compute_num_boxes(targets, device))["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch["pixel_values"])


def largest_batch(model: GroupedSam3, criterion, groups: list[dict], device: torch.device, dtype: torch.dtype,
                  budget: Budget, cap: int, reserve: float) -> str:
    """Largest power-of-two image count whose train_step fits ('>= n' when the cap or the budget stopped it)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    fits, size, step_s = 0, 1, 0.0
    while size <= cap:
        if not budget.allows(step_s * 2.5 + 5 + reserve):
            return f">= {fits} (budget)"
        batch = collate_image_groups([groups[i % len(groups)] for i in range(size)])
        started = time.perf_counter()
        try:
            train_step(model, criterion, optimizer, scaler, [batch], device, dtype, 0.0, 1)
            synchronize(device)
        except torch.cuda.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            return str(fits)
        step_s = time.perf_counter() - started
        fits, size = size, size * 2
    return f">= {fits} (cap)"


def find_all_latency(model_dir: Path, image: Image.Image, phrases: list[str], device: torch.device,
                     dtype: torch.dtype) -> tuple[float, float]:
    """(ms uncached, ms cached) of predict_many on one image: mean of 3 after a warm-up."""
    model, tokenizer = load_sam3(model_dir, device=device, dtype=dtype)
    cache = BackboneCache(max_images=2)
    timings = {"uncached": [], "cached": []}
    for repeat in range(4):
        for kind in ("uncached", "cached"):
            if kind == "uncached":
                cache.clear()
            synchronize(device)
            started = time.perf_counter()
            predict_many(model, tokenizer, image, phrases, score_threshold=0.5, cache=cache)
            synchronize(device)
            if repeat:
                timings[kind].append((time.perf_counter() - started) * 1000)
    del model
    gc.collect()
    return tuple(sum(values) / len(values) for values in timings.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-budget", type=float, default=330.0, help="seconds for the whole suite (default 330)")
    parser.add_argument("--tiny", action="store_true", help="CPU, the tiny SAM3 at 112 px (checks the suite's code)")
    args = parser.parse_args()
    budget = Budget(args.time_budget)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.tiny:
        parser.error("no CUDA GPU here: run with --tiny (CPU, tiny SAM3) or on a GPU machine")
    train_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # what precision auto picks
    steps, cap = (3, 2) if args.tiny else (8, MAX_BATCH)
    if args.tiny:
        torch.set_num_threads(1)  # the tiny model gains nothing from threads; on a busy CPU they cost 10x
    rows, find_rows = [], []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model_dir = save_suite_model(folder / "model", args.tiny, device)
        _, tokenizer = load_sam3(model_dir)
        size = 112 if args.tiny else 1008
        width, height = (160, 120) if args.tiny else (1920, 1080)
        annotations = write_jpeg_set(folder / "data", width, height, count=8 if args.tiny else 24)
        queries = FindQueryDataset(annotations, annotations.parent / "images", tokenizer, size, negatives_per_image=2)
        groups = [ImageGroupDataset(queries, None, seed=0)[i] for i in range(len(queries.records))]
        peak = peak_bf16_flops()
        for preset in PRESET_FILES:
            for mask_mode in MASK_MODES:
                rows.append(measure_preset(preset, mask_mode, model_dir, annotations, folder, device, train_dtype,
                                           groups, budget, steps, cap, peak))
                print(f"  measured {preset} / {mask_mode} ({budget.left():.0f} s of the budget left)", flush=True)
        image = Image.open(annotations.parent / "images" / "0001.jpg").convert("RGB")
        phrases = list(queries.categories.values())
        for dtype in (torch.float32, torch.bfloat16):
            name = "bf16" if dtype == torch.bfloat16 else "fp32"
            if device.type == "cpu" and dtype != torch.float32:
                find_rows.append((name, "n/a on CPU (bf16 refused there)", ""))
            elif not budget.allows(20 if device.type == "cuda" else 5):
                find_rows.append((name, "skipped (time budget)", ""))
            else:
                uncached, cached = find_all_latency(model_dir, image, phrases, device, dtype)
                find_rows.append((name, f"{uncached:.1f} ms", f"{cached:.1f} ms"))
        prelabel_rows = prelabel_rates(model_dir, device, train_dtype, size, budget, (1, 2) if args.tiny else (1, 4, 8))
    print_table(device, rows, find_rows, len(phrases), size)
    print(f"\nPre-label model pass, {len(PRELABEL_PHRASES)} phrases per image (propose_batch), {train_dtype}:")
    print("| image batch | images/s |")
    print("|-------------|----------|")
    for image_batch, rate in prelabel_rows:
        print(f"| {image_batch} | {rate} |")


def prelabel_rates(model_dir: Path, device: torch.device, dtype: torch.dtype, size: int, budget: Budget,
                   image_batches: tuple[int, ...]) -> list[tuple[int, str]]:
    """[(image batch, "N.NN" images/s or why skipped)] of the pre-label job's model pass."""
    model, tokenizer = load_sam3(model_dir)
    model = model.to(device=device, dtype=dtype).eval()
    rates = []
    for image_batch in image_batches:
        if not budget.allows(15 if device.type == "cuda" else 2):
            rates.append((image_batch, "skipped (time budget)"))
            continue
        rate = model_images_per_s(model, tokenizer, size, image_batch, PRELABEL_PHRASES, batches=3)
        rates.append((image_batch, f"{rate:.2f}"))
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rates


def save_suite_model(folder: Path, tiny: bool, device: torch.device) -> Path:
    """The tiny SAM3, or Sam3Model(Sam3Config()) built on `device` (random init on a GPU is fast), saved."""
    if tiny:
        return save_tiny_sam3(folder)
    from transformers import Sam3Config, Sam3Model

    torch.manual_seed(0)
    with torch.device(device):
        model = Sam3Model(Sam3Config())
    model.save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)  # random weights: any ids below the real vocab do
    del model
    torch.cuda.empty_cache() if device.type == "cuda" else None
    return folder


def measure_preset(preset: str, mask_mode: str, model_dir: Path, annotations: Path, folder: Path,
                   device: torch.device, dtype: torch.dtype, groups: list[dict], budget: Budget, steps: int,
                   cap: int, peak: float | None) -> dict:
    reserve = FIND_ALL_RESERVE_S if device.type == "cuda" else 0.0  # keep time for the Find-all rows
    row = {"preset": preset, "mask": mask_mode, "images/s": "skipped (time budget)", "MFU": "-", "peak GiB": "-",
           "largest batch": "-"}
    cfg = preset_config(preset, mask_mode, model_dir, annotations, folder / f"run-{preset}-{mask_mode}",
                        device.type, steps)
    row["rank / dropout / batch"] = f"{cfg.lora.rank} / {cfg.lora.dropout} / {cfg.data.batch_size}"
    row["ckpt"] = "on" if cfg.checkpoint_vision else "off"
    if not budget.allows((25 if device.type == "cuda" else 2) + reserve):
        return row
    images_per_s, peak_gib = train_images_per_s(cfg, device)
    row["images/s"] = f"{images_per_s:.2f}"
    row["peak GiB"] = "-" if peak_gib != peak_gib else f"{peak_gib:.1f}"
    model = grouped_model(model_dir, cfg, device)
    criterion = build_criterion(cfg.loss, mask_mode=cfg.loss.mask_mode, num_points=cfg.loss.num_points or 1)
    flops = flops_per_image(model, criterion, collate_image_groups(groups[:cfg.data.batch_size]), device, dtype)
    row["MFU"] = f"{flops * images_per_s / peak:.1%}" if peak else f"- ({flops / 1e12:.2f} TFLOP/image)"
    row["largest batch"] = largest_batch(model, criterion, groups, device, dtype, budget, cap, reserve)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def print_table(device: torch.device, rows: list[dict], find_rows: list[tuple], phrases: int, size: int) -> None:
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (tiny SAM3, --tiny)"
    print(f"\nGPU suite on {where}, {size} px, train() precision auto")
    columns = ["preset", "mask", "rank / dropout / batch", "ckpt", "images/s", "MFU", "peak GiB", "largest batch"]
    widths = [max(len(column), *(len(str(row[column])) for row in rows)) for column in columns]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths)) + " |")
    print(f"\nFind all, 1 image, {phrases} phrases (predict_many):")
    print("| weights | uncached | cached |")
    print("|---------|----------|--------|")
    for name, uncached, cached in find_rows:
        print(f"| {name} | {uncached} | {cached} |")


if __name__ == "__main__":
    main()
