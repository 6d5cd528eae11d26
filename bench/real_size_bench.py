"""SAM3 at its REAL size on a CPU: one backbone pass per image, step time, and activation memory.

The model is `Sam3Model(Sam3Config())` (840M parameters, 1008 px), random weights,
saved with save_pretrained and loaded back through `sam3_lora.model.load_sam3` (the
training code's loading path). The batch is one 1080p JPEG with 2 positive concepts
(2 instances each) and 2 negatives: 4 find-queries, as the training loader makes it
(`ImageGroupDataset`, default augmentation). Printed in one run:

1. ViT passes per image: vision-encoder input rows of one train_step, grouped
   (`GroupedSam3`: 1) and per-query (`per_query_batch`, the trainer before issue 15:
   one per find-query, 4). Counted by a pre-hook that stops the step there.
2. `decoder` preset train_step time, before (per-query) and after (grouped). A whole
   real-size step takes tens of minutes on a busy 2-core CPU, so it is composed from
   measured parts, all at real size: T_vit = embeddings + neck + 28 windowed + 4 global
   ViT layers (one of each timed, no grad: the decoder preset's ViT is frozen), and
   T_rest = the grouped train_step with the image's backbone features already in
   GroupedSam3's feature cache (everything but the ViT, 4 queries, forward + backward).
   before = 4 T_vit + T_rest, after = T_vit + T_rest (the rest works on the same 4
   queries either way). `--whole-steps` times the two real steps instead.
3. Activation bytes kept for the backward per image, `full` preset (LoRA in the ViT),
   under `torch.autograd.graph.saved_tensors_hooks`, each saved storage once,
   parameters left out. With ViT gradient checkpointing = saved by the rest of the
   model (measured: the step's forward from cached features that require grad) + the
   32 kept ViT layer inputs (exact) + embeddings and neck (measured); the DETR layers
   and the mask decoder are checkpointed too (sam3_lora.grouped_forward). Without ViT
   checkpointing: the 32 layer inputs replaced by what one windowed and one global
   layer save (measured) x 28 and x 4. Extrapolated from those layers, as stated.

Run: python bench/real_size_bench.py   (~10-15 min on a busy 2-core CPU, ~10 GB of RAM)
     python bench/real_size_bench.py --tiny   (the tiny SAM3: checks the script quickly)
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
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

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
    return GroupedSam3(model, cache_backbone=True).train()


def one_step(model: GroupedSam3, batch: dict) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_step(model, build_criterion(), optimizer, scaler, [batch], torch.device("cpu"), torch.float32, 0.1, 1)


class _AtBackbone(Exception):
    """Raised by a pre-hook on the vision encoder: the step has shown what it feeds the ViT."""


def vit_rows(model: GroupedSam3, batch: dict) -> int:
    """Image rows the vision encoder gets in one train_step of `batch` (the step stops there)."""
    rows = []

    def stop(module, args):
        rows.append(args[0].shape[0])
        raise _AtBackbone

    model.feature_cache.clear()
    handle = model.module.get_base_model().vision_encoder.register_forward_pre_hook(stop)
    try:
        one_step(model, batch)
    except _AtBackbone:
        pass
    finally:
        handle.remove()
    return sum(rows)


def seconds(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


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


class VisionParts:
    """The real ViT taken apart: embeddings (+ norm), one windowed and one global layer, the FPN neck."""

    def __init__(self, model: GroupedSam3, pixel_values: torch.Tensor) -> None:
        vision = model.module.get_base_model().vision_encoder
        self.backbone, self.neck = vision.backbone, vision.neck
        config = self.backbone.config
        self.globals = list(config.global_attn_indexes)
        self.windowed = next(i for i in range(len(self.backbone.layers)) if i not in self.globals)
        self.pixel_values = pixel_values
        self.side = pixel_values.shape[-1] // config.patch_size

    def embed(self) -> torch.Tensor:
        hidden = self.backbone.embeddings(self.pixel_values)
        return self.backbone.layer_norm(hidden.view(hidden.shape[0], self.side, self.side, -1))

    def layer(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        layer = self.backbone.layers[index]
        layer.gradient_checkpointing = False
        return layer(hidden)

    def features(self, hidden: torch.Tensor) -> Sam3VisionEncoderOutput:
        """Backbone features of the shapes the real ViT gives (the neck applied to `hidden`)."""
        fpn, positions = self.neck(hidden.permute(0, 3, 1, 2))
        return Sam3VisionEncoderOutput(last_hidden_state=hidden.flatten(1, 2), fpn_hidden_states=fpn,
                                       fpn_position_encoding=positions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny SAM3 (112 px): checks the script quickly")
    parser.add_argument("--memory-only", action="store_true", help="only part 3 (activation memory)")
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
              f"saved and loaded through load_sam3 in {time.perf_counter() - started:.0f} s", flush=True)
        batch = one_image_batch(folder / "data", tokenizer, size)
        key = batch["image_keys"][0]

        if not args.memory_only:
            decoder = lora_model(model_dir, "decoder", checkpointing=False)
            grouped_rows, per_query_rows = vit_rows(decoder, batch), vit_rows(decoder, per_query_batch(batch))
            print(f"ViT passes per image: {grouped_rows} grouped (after), {per_query_rows} per-query (before)", flush=True)
            parts = VisionParts(decoder, batch["pixel_values"])
            with torch.no_grad():  # the decoder preset's ViT is frozen: no graph
                embed_s, hidden = seconds(parts.embed)
                windowed_s, _ = seconds(parts.layer, parts.windowed, hidden)
                global_s, _ = seconds(parts.layer, parts.globals[0], hidden)
                neck_s, features = seconds(parts.features, hidden)
            layers = len(parts.backbone.layers)
            vit_s = embed_s + neck_s + (layers - len(parts.globals)) * windowed_s + len(parts.globals) * global_s
            decoder.feature_cache[key] = features
            rest_s, _ = seconds(one_step, decoder, batch)  # every part of the step but the ViT
            del decoder
            gc.collect()
            before, after = per_query_rows * vit_s + rest_s, grouped_rows * vit_s + rest_s
            print(f"ViT pass {vit_s:.1f} s (embeddings {embed_s:.1f} + neck {neck_s:.1f} + {layers - len(parts.globals)} x "
                  f"windowed layer {windowed_s:.1f} + {len(parts.globals)} x global layer {global_s:.1f}); rest of the "
                  f"decoder step (4 queries, forward + backward) {rest_s:.1f} s")
            print(f"decoder preset step: before {before:.1f} s ({per_query_rows} ViT passes + rest), after {after:.1f} s "
                  f"(1 + rest), ratio {before / after:.2f}x (composed from the measured parts above)", flush=True)

        full = lora_model(model_dir, "full", checkpointing=True)
        parts = VisionParts(full, batch["pixel_values"])
        layers = len(parts.backbone.layers)
        with SavedBytes(full) as embed_saved:
            hidden = parts.embed()
        hidden = hidden.detach().requires_grad_()  # as if it came from LoRA'd ViT layers
        with SavedBytes(full) as neck_saved:
            features = parts.features(hidden)
        full.feature_cache[key] = features
        rest_saved = {}
        for checkpointing in (True, False):
            set_vit_checkpointing(full.module, checkpointing)
            with SavedBytes(full) as saved:
                outputs = forward_with_layer_outputs(full, *batch_inputs(batch, torch.device("cpu")))
            rest_saved[checkpointing] = saved.total
            del outputs
            gc.collect()
        layer_saved = []
        for index in (parts.windowed, parts.globals[0]):
            with SavedBytes(full) as saved:
                output = parts.layer(index, hidden)
            layer_saved.append(saved.total)
            del output
        layer_input = hidden.numel() * hidden.element_size()
        common = embed_saved.total + neck_saved.total
        with_checkpointing = common + rest_saved[True] + layers * layer_input
        without = common + rest_saved[False] + (layers - len(parts.globals)) * layer_saved[0] + \
            len(parts.globals) * layer_saved[1]
        print(f"full preset, activations kept per image (4 find-queries): {with_checkpointing / GIB:.2f} GiB with "
              f"checkpointing (ViT, DETR layers, mask decoder), {without / GIB:.2f} GiB without. "
              f"Parts (measured with saved-tensor hooks): "
              f"rest of the model {rest_saved[True] / GIB:.2f} GiB with (DETR layers and mask decoder "
              f"checkpointed) / {rest_saved[False] / GIB:.2f} GiB without, neck {neck_saved.total / GIB:.3f} GiB, "
              f"embeddings {embed_saved.total / GIB:.3f} GiB; per ViT layer {layer_input / GIB:.3f} GiB kept with "
              f"checkpointing vs {layer_saved[0] / GIB:.3f} (windowed) / {layer_saved[1] / GIB:.3f} (global) GiB "
              f"without; x{layers - len(parts.globals)} windowed, x{len(parts.globals)} global layers (extrapolated "
              f"from one of each)")


if __name__ == "__main__":
    main()
