"""One backbone pass per image and ViT gradient checkpointing change no number of a training step.

On the tiny SAM3 with the full preset (LoRA in the ViT, so the backbone gets gradients):
- a micro-batch of 2 images, each with all its find-queries (concepts + negatives, one
  augmentation per image), through GroupedSam3 runs the ViT once per image, and gives
  the same loss terms and LoRA gradients as the same find-queries with one image copy
  each (the trainer before grouping: one ViT pass per query);
- ViT gradient checkpointing on or off gives the same loss and gradients, LoRA dropout
  on (the recompute replays the RNG);
- the loader's items: the queries of an image share its pixels (one augmentation).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam3_lora.augment import AugmentSettings
from sam3_lora.data import FindQueryDataset
from sam3_lora.grouped_forward import GroupedSam3, set_vit_checkpointing
from sam3_lora.image_groups import ImageGroupDataset, collate_image_groups, per_query_batch
from sam3_lora.lora import LoraSettings, apply_lora
from sam3_lora.losses import build_criterion
from sam3_lora.model import load_sam3
from sam3_lora.synthetic import write_synthetic_coco
from sam3_lora.train_step import train_step


@pytest.fixture(scope="module")
def image_batch(tiny_model_dir, tmp_path_factory) -> dict:
    """2 images with >= 2 concepts between them and 2 negatives each, augmented (flip / zoom) per image."""
    annotations = write_synthetic_coco(tmp_path_factory.mktemp("groups"), num_images=6, image_size=112,
                                       concepts=("circle", "square", "triangle", "ring"), max_instances=3, seed=5)
    _, tokenizer = load_sam3(tiny_model_dir)
    queries = FindQueryDataset(annotations, annotations.parent / "images", tokenizer, 112, negatives_per_image=2)
    groups = ImageGroupDataset(queries, AugmentSettings(hflip_prob=0.5, scale_min=0.8, scale_max=1.25), seed=1)
    items = sorted((groups[(3, i)] for i in range(len(groups))), key=lambda item: -len(item["find_queries"]))
    return collate_image_groups(items[:2])


def lora_model(tiny_model_dir: Path, dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    base, _ = load_sam3(tiny_model_dir)
    model = apply_lora(base, LoraSettings(components="full", rank=4, alpha=8, dropout=dropout))
    for name, parameter in model.named_parameters():  # B starts at 0: give every LoRA pair a gradient path
        if ".lora_B." in name:
            torch.nn.init.normal_(parameter, std=0.02)
    return GroupedSam3(model).train()


def step_and_grads(model: torch.nn.Module, batch: dict) -> tuple[dict, dict, int]:
    """Loss terms, LoRA gradients and ViT passes of one train_step (lr 0: the weights stay put)."""
    passes = []
    vit = model.module.get_base_model().vision_encoder
    handle = vit.register_forward_hook(lambda module, args, output: passes.append(args[0].shape[0]))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    torch.manual_seed(123)  # LoRA dropout and the point sampling of the mask loss draw the same numbers
    try:
        terms = train_step(model, build_criterion(num_points=300), optimizer, scaler, [batch], torch.device("cpu"),
                           torch.float32, 0.0, 1)
    finally:
        handle.remove()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return terms, grads, sum(passes)


def test_image_batch_shares_pixels_and_has_negatives(image_batch):
    index = image_batch["image_index"]
    assert image_batch["pixel_values"].shape[0] == 2 and len(image_batch["targets"]) == len(index) >= 6
    assert sum(len(t["boxes"]) == 0 for t in image_batch["targets"]) >= 2  # negatives (2 per image where possible)
    assert sum(len(t["boxes"]) > 0 for t in image_batch["targets"]) >= 2
    assert index.tolist() == sorted(index.tolist())  # an image's queries are contiguous
    for target, row in zip(image_batch["targets"], index.tolist()):
        assert target["masks"].dtype == torch.bool and target["masks"].shape[-1] == 112
    per_query = per_query_batch(image_batch)
    assert torch.equal(per_query["pixel_values"][2], image_batch["pixel_values"][index[2]])


def test_grouped_backbone_step_equals_the_per_query_step(tiny_model_dir, image_batch):
    grouped_terms, grouped_grads, grouped_passes = step_and_grads(lora_model(tiny_model_dir, 0.0), image_batch)
    single_terms, single_grads, single_passes = step_and_grads(lora_model(tiny_model_dir, 0.0),
                                                               per_query_batch(image_batch))
    queries = len(image_batch["targets"])
    assert (grouped_passes, single_passes) == (2, queries)  # ViT rows: one per image vs one per find-query
    assert grouped_terms.keys() == single_terms.keys()
    for name in grouped_terms:
        assert grouped_terms[name] == pytest.approx(single_terms[name], rel=1e-5, abs=1e-6), name
    vit_grads = [name for name in grouped_grads if "vision_encoder" in name]
    assert vit_grads and all(grouped_grads[name].abs().sum() > 0 for name in vit_grads)
    for name in grouped_grads:
        torch.testing.assert_close(grouped_grads[name], single_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_vit_checkpointing_gives_the_same_gradients(tiny_model_dir, image_batch):
    plain = lora_model(tiny_model_dir, 0.1)
    checkpointed = lora_model(tiny_model_dir, 0.1)
    assert set_vit_checkpointing(checkpointed.module, True) == 2 + 1 + 2 + 1  # ViT, DETR enc, DETR dec, masks
    plain_terms, plain_grads, _ = step_and_grads(plain, image_batch)
    checkpointed_terms, checkpointed_grads, _ = step_and_grads(checkpointed, image_batch)
    assert checkpointed_terms == plain_terms
    for name in plain_grads:
        torch.testing.assert_close(checkpointed_grads[name], plain_grads[name], rtol=1e-6, atol=1e-8, msg=name)


def test_backbone_cache_reuses_an_images_features(tiny_model_dir, image_batch):
    base, _ = load_sam3(tiny_model_dir)
    model = GroupedSam3(apply_lora(base, LoraSettings(components="decoder", rank=4, dropout=0.0)),
                        cache_backbone=True).train()
    passes = []
    base.vision_encoder.register_forward_hook(lambda module, args, output: passes.append(args[0].shape[0]))
    inputs = {name: image_batch[name] for name in ("pixel_values", "input_ids", "attention_mask", "image_index",
                                                   "image_keys")}
    torch.manual_seed(0)  # SAM3's own dropout (DETR layers) is on in training mode
    first = model(**inputs)
    torch.manual_seed(0)
    second = model(**inputs)  # a later epoch: features from the cache
    assert passes == [2] and len(model.feature_cache) == 2
    torch.testing.assert_close(second.pred_masks, first.pred_masks, rtol=0, atol=0)
    one_image = {**inputs, "pixel_values": inputs["pixel_values"][1:], "image_keys": inputs["image_keys"][1:],
                 "image_index": torch.zeros(int((inputs["image_index"] == 1).sum()), dtype=torch.long),
                 "input_ids": inputs["input_ids"][inputs["image_index"] == 1],
                 "attention_mask": inputs["attention_mask"][inputs["image_index"] == 1]}
    model.eval()  # no dropout: the one-image batch draws differently
    alone = model(**one_image)
    assert passes == [2, 1]  # not cached in eval mode (validation)
    model.train()
    alone_cached = model(**one_image)
    assert passes == [2, 1]
    assert alone_cached.pred_masks.shape == alone.pred_masks.shape
