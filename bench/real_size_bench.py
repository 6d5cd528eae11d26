"""SAM3 at its REAL size on a CPU: one backbone pass per image, step time, and activation memory.

The model is `Sam3Model(Sam3Config())` (840M parameters, 1008 px), random weights,
saved with save_pretrained and loaded back through `sam3_lora.model.load_sam3` (the
training code's loading path). The batch is one 1080p JPEG with 2 positive concepts
(2 instances each) and 2 negatives: 4 find-queries, as the training loader makes it
(`ImageGroupDataset`, default augmentation). Printed in one run:

1. ViT passes per image: vision-encoder rows per step, grouped (`GroupedSam3`: 1)
   and per-query (`per_query_batch`, the trainer before issue 15: one per find-query, 4).
2. `decoder` preset train_step time, per-query (before) and grouped (after), one
   step each after nothing else (a CPU, so no warm-up to speak of), and their ratio.
3. Activation bytes kept for the backward per image, `full` preset (LoRA in the
   ViT): the forward of one train step under `torch.autograd.graph.saved_tensors_hooks`,
   counting each saved storage once and leaving out parameters. With ViT gradient
   checkpointing: measured over the whole model. Without it: extrapolated, because
   it does not fit in this machine's memory: (model with checkpointing) - (the 32
   kept ViT layer inputs) + (bytes one windowed and one global ViT layer save,
   measured, times 28 and 4).

Run: python bench/real_size_bench.py   (~15-25 min on 2 cores, ~8 GB of RAM)
     python bench/real_size_bench.py --tiny   (the tiny SAM3: checks the script in seconds)
Timings go here, never into tests.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import Sam3Config, Sam3Model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_bench import write_jpeg_set  # noqa: E402  (bench/ is not a package)

from sam3_lora.augment import AugmentSettings  # noqa: E402
from sam3_lora.data import FindQueryDataset  # noqa: E402
from sam3_lora.grouped_forward import GroupedSam3, set_vit_checkpointing  # noqa: E402
from sam3_lora.image_groups import ImageGroupDataset, collate_image_groups, per_query_batch  # noqa: E402
from sam3_lora.layer_outputs import forward_with_layer_outputs  # noqa: E402
from sam3_lora.lora import LoraSettings, apply_lora  # noqa: E402
from sam3_lora.losses import build_criterion  # noqa: E402
from sam3_lora.model import load_sam3, model_image_size  # noqa: E402
from sam3_lora.tiny import build_tiny_tokenizer, save_tiny_sam3  # noqa: E402
from sam3_lora.train_step import batch_inputs, train_step  # noqa: E402

GIB = 2**30


def save_real_size_sam3(folder: Path) -> Path:
    """Sam3Model(Sam3Config()) with random weights, plus a tokenizer (ids below the real vocab), saved to `folder`."""
    torch.manual_seed(0)
    model = Sam3Model(Sam3Config())
    model.save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    del model
    gc.collect()
    return folder


def one_image_batch(folder: Path, tokenizer, size: int) -> dict:
    """One 1080p JPEG, 2 concepts x 2 instances, 2 negatives -> the collated image-group batch (4 find-queries)."""
    annotations = write_jpeg_set(folder, 1920, 1080, count=1, seed=3)
    augment = AugmentSettings(hflip_prob=0.5, scale_min=0.75, scale_max=1.25)
    queries = FindQueryDataset(annotations, annotations.parent / "images", tokenizer, size, negatives_per_image=2)
    batch = collate_image_groups([ImageGroupDataset(queries, augment, seed=0)[(0, 0)]])
    positives = sum(len(t["boxes"]) > 0 for t in batch["targets"])
    print(f"batch: 1 image, {len(batch['targets'])} find-queries ({positives} positive, "
          f"{len(batch['targets']) - positives} negative), {size} px")
    return batch


def lora_model(model_dir: Path, preset: str, checkpointing: bool) -> GroupedSam3:
    base, _ = load_sam3(model_dir)
    model = apply_lora(base, LoraSettings(components=preset, rank=16, alpha=32.0, dropout=0.0))
    set_vit_checkpointing(model, checkpointing)
    return GroupedSam3(model).train()


def timed_step(model: GroupedSam3, batch: dict) -> tuple[float, int]:
    """(seconds of one train_step, ViT rows it ran)."""
    rows = []
    handle = model.module.get_base_model().vision_encoder.register_forward_hook(
        lambda module, args, output: rows.append(args[0].shape[0]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    started = time.perf_counter()
    train_step(model, build_criterion(), optimizer, scaler, [batch], torch.device("cpu"), torch.float32, 0.1, 1)
    seconds = time.perf_counter() - started
    handle.remove()
    return seconds, sum(rows)


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward inside the block, parameters left out."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.layout == torch.strided and tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in self.parameters:
                self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def full_preset_saved_bytes(model: GroupedSam3, batch: dict) -> int:
    """Activation bytes the forward of one full-preset step keeps for its backward (graph dropped after)."""
    with SavedBytes(model) as saved:
        outputs = forward_with_layer_outputs(model, *batch_inputs(batch, torch.device("cpu")))
    del outputs
    gc.collect()
    return saved.total


def vit_layer_saved_bytes(model: GroupedSam3, batch: dict) -> tuple[int, int, int]:
    """(bytes a windowed ViT layer saves, bytes a global one saves, bytes of one layer input), no checkpointing."""
    backbone = model.module.get_base_model().vision_encoder.backbone
    global_index = backbone.config.global_attn_indexes[0]
    windowed_index = next(i for i in range(len(backbone.layers)) if i not in backbone.config.global_attn_indexes)
    with torch.no_grad():
        hidden = backbone.embeddings(batch["pixel_values"])
        side = batch["pixel_values"].shape[-1] // backbone.config.patch_size
        hidden = backbone.layer_norm(hidden.view(hidden.shape[0], side, side, -1))
    results = []
    for index in (windowed_index, global_index):
        layer = backbone.layers[index]
        layer.gradient_checkpointing = False
        with SavedBytes(model) as saved:
            output = layer(hidden)
        del output
        results.append(saved.total)
    return results[0], results[1], hidden.numel() * hidden.element_size()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny SAM3 (112 px): checks the script quickly")
    args = parser.parse_args()
    print(f"CPU, {torch.get_num_threads()} threads, fp32")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        started = time.perf_counter()
        model_dir = save_tiny_sam3(folder / "model") if args.tiny else save_real_size_sam3(folder / "model")
        base, tokenizer = load_sam3(model_dir)
        size = model_image_size(base)
        params = sum(p.numel() for p in base.parameters())
        del base
        gc.collect()
        print(f"model: {'tiny' if args.tiny else 'Sam3Model(Sam3Config())'}, {params / 1e6:.0f}M parameters, "
              f"saved and loaded through load_sam3 in {time.perf_counter() - started:.0f} s")
        batch = one_image_batch(folder / "data", tokenizer, size)

        decoder = lora_model(model_dir, "decoder", checkpointing=False)
        after, after_rows = timed_step(decoder, batch)
        before, before_rows = timed_step(decoder, per_query_batch(batch))
        del decoder
        gc.collect()
        print(f"ViT passes per image: {after_rows} grouped (after), {before_rows} per-query (before)")
        print(f"decoder preset step: before {before:.1f} s, after {after:.1f} s, ratio {before / after:.2f}x")

        full = lora_model(model_dir, "full", checkpointing=True)
        with_checkpointing = full_preset_saved_bytes(full, batch)
        windowed, global_, layer_input = vit_layer_saved_bytes(full, batch)
        layers = len(full.module.get_base_model().vision_encoder.backbone.layers)
        globals_ = len(full.module.get_base_model().vision_encoder.backbone.config.global_attn_indexes)
        without = with_checkpointing - layers * layer_input + (layers - globals_) * windowed + globals_ * global_
        print(f"full preset, activations kept per image (4 find-queries): {with_checkpointing / GIB:.2f} GiB with ViT "
              f"checkpointing (measured); {without / GIB:.2f} GiB without (extrapolated: a windowed ViT layer "
              f"saves {windowed / GIB:.3f} GiB, a global one {global_ / GIB:.3f} GiB, x{layers - globals_} and "
              f"x{globals_}, in place of {layers} kept layer inputs of {layer_input / GIB:.3f} GiB)")


if __name__ == "__main__":
    main()
