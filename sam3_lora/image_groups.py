"""Training items grouped by image: every find-query of one image, one decode, one augmentation.

SAM3 runs its ViT (454M of 840M parameters) on the image only; the phrase enters
later (DETR encoder / decoder). So the find-queries of one image (its k concepts and
its negatives) share one backbone pass when they travel together: item i of
`ImageGroupDataset` is image i with all its find-queries of that epoch, the image
decoded once, its instance masks decoded and resized once (bool), and one
augmentation (generator seeded by (seed, epoch, image id)) applied to the image and
all masks together.

Keys: `dataset[(epoch, i)]` (the training loader asks this way, so a worker process
never needs the epoch set on its copy of the dataset) or `dataset[i]` (epoch 0).

Batch contract of `collate_image_groups` (N images, B = their find-queries, in order):
pixel_values [N,3,S,S] float, image_index [B] long (row of pixel_values for each query),
input_ids [B,32] long, attention_mask [B,32] long, image_keys [N] str (the image files),
targets: B dicts {boxes [T_i,4] cxcywh, masks [T_i,S,S] bool, image_id, category_id, phrase}.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from sam3_lora.augment import AugmentSettings, augment_image_and_masks, drop_empty_masks, mask_boxes_cxcywh
from sam3_lora.coco import rles_at_size
from sam3_lora.data import FindQueryDataset, seeded_generator
from sam3_lora.image_decode import load_model_pixels


class ImageGroupDataset(Dataset):
    """The images of a FindQueryDataset, each with all its find-queries; augment None = off."""

    def __init__(self, queries: FindQueryDataset, augment: AugmentSettings | None, seed: int) -> None:
        self.queries = queries
        self.augment = augment
        self.seed = int(seed)
        self.image_size = queries.image_size
        # Images that can never yield a find-query (no instance, no concept to ask as a negative) are left out.
        self.records = [record for record in queries.records if queries.queries_of(record, 0)]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        record = self.records[index]
        find_queries = self.queries.queries_of(record, epoch)
        size = self.image_size
        pixels = load_model_pixels(record.path, size)
        # All instances of all positive concepts of the image: decoded and resized once.
        spans, rles = [], []
        for query in find_queries:
            own = record.instances.get(query.category_id, []) if query.positive else []
            spans.append((len(rles), len(rles) + len(own)))
            rles.extend(own)
        if rles:
            masks = rles_at_size(rles, size)
        else:
            masks = torch.zeros((0, size, size), dtype=torch.bool)
        if self.augment is not None:
            generator = seeded_generator(self.seed, epoch, record.image_id, 1)
            pixels, masks = augment_image_and_masks(pixels, masks, self.augment, generator)
        items = []
        for query, (start, end) in zip(find_queries, spans):
            if self.augment is not None:
                own_masks, boxes = drop_empty_masks(masks[start:end])
            else:
                own_masks = masks[start:end]
                boxes = mask_boxes_cxcywh(own_masks)
            input_ids, attention_mask = self.queries.tokens_of(query.phrase)
            items.append({"input_ids": input_ids, "attention_mask": attention_mask,
                          "target": {"boxes": boxes, "masks": own_masks, "image_id": query.image_id,
                                     "category_id": query.category_id, "phrase": query.phrase}})
        return {"pixel_values": pixels, "image_key": str(record.path), "find_queries": items}


def collate_image_groups(groups: list[dict]) -> dict:
    """Image groups -> the batch contract in the module docstring; an image without find-queries is left out."""
    groups = [group for group in groups if group["find_queries"]]
    if not groups:
        raise ValueError("cannot collate image groups without any find-query")
    queries = [(row, item) for row, group in enumerate(groups) for item in group["find_queries"]]
    return {
        "pixel_values": torch.stack([group["pixel_values"] for group in groups]),
        "image_index": torch.tensor([row for row, _ in queries], dtype=torch.long),
        "input_ids": torch.stack([item["input_ids"] for _, item in queries]).long(),
        "attention_mask": torch.stack([item["attention_mask"] for _, item in queries]).long(),
        "image_keys": [group["image_key"] for group in groups],
        "targets": [item["target"] for _, item in queries],
    }


def per_query_batch(batch: dict) -> dict:
    """The same batch with one image row per find-query (pixel_values [B,3,S,S], image_index = 0..B-1):
    what the trainer did before grouping, one backbone pass per find-query. For tests and benchmarks."""
    index = batch["image_index"]
    return {**batch, "pixel_values": batch["pixel_values"][index], "image_index": torch.arange(len(index)),
            "image_keys": [batch["image_keys"][i] for i in index.tolist()]}
