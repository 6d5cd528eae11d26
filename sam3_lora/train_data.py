"""The data side of a training run: train/val image groups and a resumable batch stream.

A micro-batch is `data.batch_size` images, each with all its find-queries
(sam3_lora.image_groups), so the backbone runs once per image. The stream is a pure
function of (seed, epoch, batch index): the sampler permutes images with seed + epoch,
negatives and augmentation are seeded by (seed, epoch, image). So a run resumed at
(epoch, batch_in_epoch) sees exactly the batches an uninterrupted run would have
seen, whatever the number of loader workers.
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
from sam3_lora.data import FindQueryDataset, split_image_ids
from sam3_lora.group_loader import build_group_loader, close_loader, default_num_workers
from sam3_lora.image_groups import ImageGroupDataset

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    train: ImageGroupDataset
    loader: object  # DataLoader over an EpochBatchSampler (sam3_lora.group_loader)
    val: ImageGroupDataset | None
    val_coco: COCO | None
    val_image_dir: Path | None
    val_image_ids: list[int]
    batch_size: int
    num_workers: int = 0
    summary: dict = field(default_factory=dict)

    @property
    def sampler(self):
        """The DistributedSampler over images: each epoch's order (set_epoch first)."""
        return self.loader.batch_sampler.sampler

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def close(self) -> None:
        """Stop the loader's worker processes."""
        close_loader(self.loader)


def build_train_data(cfg: TrainConfig, tokenizer, image_size: int, pin_memory: bool = False) -> TrainData:
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
                             augment=None, seed=cfg.seed)  # augmented per image by ImageGroupDataset
    summary = {"train": train.summary().to_dict(), "val": None, "warnings": []}
    val = val_coco = None
    val_image_ids: list[int] = []
    if data.val_annotations is not None or val_ids:
        val_coco = coco if data.val_annotations is None else load_coco(val_json)
        val_image_ids = sorted(val_ids if val_ids is not None else val_coco.getImgIds())
        try:
            val_queries = FindQueryDataset(val_json, val_dir, tokenizer, image_size,
                                           negatives_per_image=data.negatives_per_image, image_ids=val_image_ids,
                                           augment=None, seed=cfg.seed)
            summary["val"] = val_queries.summary().to_dict()
            val = ImageGroupDataset(val_queries, augment=None, seed=cfg.seed)
        except DatasetError as error:
            # A small project can draw a val split with no labelled object: train on, say so.
            summary["warnings"].append(f"validation skipped: {error}")
            log.warning("validation skipped: %s", error)
            val_coco, val_image_ids = None, []
    for name in summary["train"]["concepts_without_examples"]:
        summary["warnings"].append(f"concept {name!r} has no labelled example; it is only used as a negative")
    groups = ImageGroupDataset(train, augment=augment, seed=cfg.seed)
    num_workers = default_num_workers(cfg.gpus) if data.num_workers is None else data.num_workers
    loader = build_group_loader(groups, data.batch_size, cfg.seed, num_workers=num_workers, pin_memory=pin_memory,
                                shuffle=True, distributed=True)
    return TrainData(train=groups, loader=loader, val=val, val_coco=val_coco, val_image_dir=val_dir if val else None,
                     val_image_ids=val_image_ids, batch_size=data.batch_size, num_workers=num_workers, summary=summary)


def epoch_batches(data: TrainData, epoch: int, start_batch: int = 0) -> Iterator[dict]:
    """Collated micro-batches of `epoch` from batch index `start_batch` on (made by the loader's workers)."""
    data.loader.batch_sampler.start(epoch, start_batch)
    yield from data.loader


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
