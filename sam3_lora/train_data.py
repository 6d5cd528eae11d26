"""The data side of a training run: train/val find-query sets and a resumable batch stream.

The stream is a pure function of (seed, epoch, batch index): the sampler permutes
with seed + epoch, negatives and augmentation are seeded per epoch. So a run
resumed at (epoch, batch_in_epoch) sees exactly the batches an uninterrupted run
would have seen.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pycocotools.coco import COCO

from sam3_lora.augment import AugmentSettings
from sam3_lora.config import TrainConfig
from sam3_lora.coco import DatasetError, load_coco
from sam3_lora.data import FindQueryDataset, build_loader, collate_find_queries, set_loader_epoch, split_image_ids

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    train: FindQueryDataset
    loader: object  # DataLoader: its sampler gives each epoch's order
    val: FindQueryDataset | None
    val_coco: COCO | None
    val_image_dir: Path | None
    val_image_ids: list[int]
    batch_size: int
    summary: dict = field(default_factory=dict)

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.loader.sampler) // self.batch_size)


def build_train_data(cfg: TrainConfig, tokenizer, image_size: int) -> TrainData:
    """Train and val find-query datasets from cfg.data; raises DatasetError before any step runs."""
    data = cfg.data
    coco = load_coco(data.train_annotations)
    image_ids = sorted(coco.getImgIds())
    if data.val_annotations is not None:
        train_ids, val_ids = image_ids, None
        val_json, val_dir = data.val_annotations, Path(data.val_images)
    else:
        train_ids, val_ids = split_image_ids(image_ids, data.val_fraction, cfg.seed)
        val_json, val_dir = data.train_annotations, Path(data.train_images)
    low, high = data.augment.scale_jitter
    augment = AugmentSettings(hflip_prob=data.augment.hflip_prob, scale_min=low, scale_max=high)
    train = FindQueryDataset(data.train_annotations, data.train_images, tokenizer, image_size,
                             negatives_per_image=data.negatives_per_image, image_ids=train_ids,
                             augment=augment, seed=cfg.seed)
    summary = {"train": train.summary().to_dict(), "val": None, "warnings": []}
    val = val_coco = None
    val_image_ids: list[int] = []
    if data.val_annotations is not None or val_ids:
        val_coco = coco if data.val_annotations is None else load_coco(val_json)
        val_image_ids = sorted(val_ids if val_ids is not None else val_coco.getImgIds())
        try:
            val = FindQueryDataset(val_json, val_dir, tokenizer, image_size,
                                   negatives_per_image=data.negatives_per_image, image_ids=val_image_ids,
                                   augment=None, seed=cfg.seed)
            summary["val"] = val.summary().to_dict()
        except DatasetError as error:
            # A small project can draw a val split with no labelled object: train on, say so.
            summary["warnings"].append(f"validation skipped: {error}")
            log.warning("validation skipped: %s", error)
            val_coco, val_image_ids = None, []
    for name in summary["train"]["concepts_without_examples"]:
        summary["warnings"].append(f"concept {name!r} has no labelled example; it is only used as a negative")
    loader = build_loader(train, data.batch_size, shuffle=True, seed=cfg.seed, distributed=True)
    return TrainData(train=train, loader=loader, val=val, val_coco=val_coco, val_image_dir=val_dir if val else None,
                     val_image_ids=val_image_ids, batch_size=data.batch_size, summary=summary)


def epoch_batches(data: TrainData, epoch: int, start_batch: int = 0) -> Iterator[dict]:
    """Collated micro-batches of `epoch` from batch index `start_batch` on."""
    set_loader_epoch(data.loader, epoch)
    order = list(data.loader.sampler)
    for start in range(start_batch * data.batch_size, len(order), data.batch_size):
        yield collate_find_queries([data.train[i] for i in order[start:start + data.batch_size]])


def step_batches(data: TrainData, accumulation: int, position: tuple[int, int]) -> Iterator[tuple[list[dict], tuple[int, int]]]:
    """Endless (micro_batches, position after them); a step never spans two epochs
    (the last one of an epoch may hold fewer than `accumulation` micro-batches)."""
    epoch, batch_in_epoch = position
    while True:
        if batch_in_epoch >= data.batches_per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
        stream = epoch_batches(data, epoch, batch_in_epoch)
        while True:
            micro = [batch for _, batch in zip(range(accumulation), stream)]
            if not micro:
                break
            batch_in_epoch += len(micro)
            yield micro, (epoch, batch_in_epoch)
        epoch, batch_in_epoch = epoch + 1, 0
