"""COCO (pycocotools) -> find-queries: (image, noun phrase, the phrase's instances in it).

One image with k usable concepts yields k positive find-queries plus up to
`negatives_per_image` negative ones (concepts of the project absent from the image,
targets T = 0), which teach SAM3's presence head that a phrase can be absent.
Negatives are re-drawn every epoch from (seed, epoch, image id): `set_epoch(epoch)`.

Annotation rules (each one counted in `summary()` so nothing is dropped silently):
- crowd (iscrowd=1): never a target, as in DETR's COCO loader, because one crowd
  region covers many objects. A concept present in an image only as crowd is
  neither a positive (no instance to match) nor a negative (it is there).
- zero area (empty mask, or w/h <= 0 without a mask): skipped and counted; its
  concept is not used as a negative for that image either (the labeller said it
  is there).
- an annotation without segmentation uses its bbox rectangle as its mask.
- masks are resized to S with nearest neighbour (pixel-centre aligned, as the image); an object that nearest sampling
  would lose (smaller than one input pixel) keeps the input pixel it covers most,
  so every target has a non-empty mask and a box.
Boxes are the tight boxes of the S x S masks (cxcywh, 0..1), so box and mask agree
exactly, before and after augmentation. Loading zero instances raises DatasetError
(the "0 objects loaded" bug of public SAM3 scripts cannot happen silently).

Batch contract of `collate_find_queries`:
pixel_values [B,3,S,S] float, input_ids [B,32] long, attention_mask [B,32] long,
targets: B dicts {boxes [T_i,4] cxcywh, masks [T_i,S,S] bool, image_id, category_id, phrase}.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sam3_lora.augment import AugmentSettings, augment_find_query, mask_boxes_cxcywh
from sam3_lora.coco import DatasetError, annotation_rle, load_coco, rles_at_size
from sam3_lora.image_decode import load_model_pixels
from sam3_lora.model import tokenize_phrases

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FindQuery:
    """One training element: the phrase of `category_id` asked of image `image_id`."""

    image_id: int
    category_id: int
    phrase: str
    positive: bool


@dataclass
class DatasetSummary:
    """What a FindQueryDataset loaded; plain types, for logs, the UI and model cards."""

    source: str
    images: int
    images_without_instances: int
    instances_per_concept: dict[str, int]
    positive_queries: int
    negative_queries: int
    skipped_crowd: int
    skipped_zero_area: int
    concepts_without_examples: list[str] = field(default_factory=list)

    @property
    def instances(self) -> int:
        return sum(self.instances_per_concept.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "instances": self.instances}


@dataclass
class _ImageRecord:
    image_id: int
    path: Path
    height: int
    width: int
    instances: dict[int, list[dict]]  # category id -> RLEs of its usable instances
    mentioned: set[int]  # every category annotated in the image (usable, crowd or zero-area)


def seeded_generator(*keys: int) -> torch.Generator:
    """A torch.Generator whose stream depends only on the integer keys (seed, epoch, ids)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def split_image_ids(image_ids: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train_ids, val_ids), both sorted; round(n*val_fraction) validation images,
    at least 1 (and at most n-1) when val_fraction > 0 and n >= 2; the order of `image_ids` does not matter."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = sorted({int(i) for i in image_ids})
    if val_fraction == 0.0 or len(ids) < 2:
        return ids, []
    num_val = min(max(1, int(round(len(ids) * val_fraction))), len(ids) - 1)
    order = torch.randperm(len(ids), generator=seeded_generator(seed)).tolist()
    val = sorted(ids[i] for i in order[:num_val])
    val_set = set(val)
    return [i for i in ids if i not in val_set], val


class FindQueryDataset(Dataset):
    """Find-queries of a COCO dataset; item i -> {pixel_values [3,S,S], input_ids [32],
    attention_mask [32], target {boxes [T,4] cxcywh, masks [T,S,S] bool, image_id, category_id, phrase}}.

    image_ids restricts the dataset to those images (a train or val split); augment
    (None = off) is applied per item with a generator seeded by (seed, epoch, image, category).
    """

    def __init__(
        self,
        coco_json: str | Path,
        image_dir: str | Path,
        tokenizer,
        image_size: int,
        negatives_per_image: int = 1,
        image_ids: list[int] | None = None,
        augment: AugmentSettings | None = None,
        seed: int = 0,
    ) -> None:
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        if negatives_per_image < 0:
            raise ValueError(f"negatives_per_image must be >= 0, got {negatives_per_image}")
        self.source = Path(coco_json)
        self.image_dir = Path(image_dir)
        self.image_size = int(image_size)
        self.negatives_per_image = int(negatives_per_image)
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.coco = load_coco(self.source)
        self.categories = self._read_categories()
        self.records, self._skipped = self._index_images(image_ids)
        self._records_by_id = {record.image_id: record for record in self.records}
        # One tokenisation per phrase, done up front so a too-long name fails before training.
        phrases = list(self.categories.values())
        tokens = tokenize_phrases(tokenizer, phrases)
        self._tokens = {p: (tokens["input_ids"][i], tokens["attention_mask"][i]) for i, p in enumerate(phrases)}
        self._summary = self._count()
        if self._summary.instances == 0:
            annotations = sum(len(self.coco.imgToAnns.get(r.image_id, [])) for r in self.records)
            raise DatasetError(
                f"0 instances loaded from {self.source}: {len(self.records)} images, {annotations} annotations in them "
                f"({self._skipped['crowd']} crowd, {self._skipped['zero_area']} zero-area, none usable as a target), "
                f"{len(self.categories)} categories ({', '.join(phrases)}); label at least one object to train"
            )
        for name in self._summary.concepts_without_examples:
            log.warning("concept %r has no example in %s; it can only appear as a negative", name, self.source)
        self.queries = self._build_queries(self.epoch)

    def _read_categories(self) -> dict[int, str]:
        categories: dict[int, str] = {}
        for category in sorted(self.coco.dataset.get("categories", []), key=lambda c: c["id"]):
            name = str(category.get("name", "")).strip()
            if not name:
                raise DatasetError(f"{self.source}: category id {category['id']} has no name (the name is the phrase)")
            if name in categories.values():
                raise DatasetError(f"{self.source}: category name {name!r} is used by two ids; phrases must be unique")
            categories[int(category["id"])] = name
        if not categories:
            raise DatasetError(f"{self.source}: no categories, so there is no phrase to train")
        return categories

    def _index_images(self, image_ids: list[int] | None) -> tuple[list[_ImageRecord], dict[str, int]]:
        known = sorted(self.coco.imgs)
        selected = known if image_ids is None else sorted({int(i) for i in image_ids})
        unknown = sorted(set(selected) - set(known))
        if unknown:
            raise DatasetError(f"{self.source}: image ids {unknown[:10]} are not in the annotations")
        if not selected:
            raise DatasetError(f"0 instances loaded from {self.source}: no images (selected {len(selected)} of {len(known)})")
        skipped = {"crowd": 0, "zero_area": 0}
        records, problems = [], []
        for image_id in selected:
            info = self.coco.imgs[image_id]
            path = self.image_dir / str(info.get("file_name", ""))
            try:
                with Image.open(path) as image:
                    width, height = image.size
            except (OSError, ValueError) as error:
                problems.append(f"image {image_id} ({path}): {type(error).__name__}: {error}")
                continue
            if (info.get("width", width), info.get("height", height)) != (width, height):
                problems.append(f"image {image_id} ({path}) is {width}x{height} but the annotations say "
                                f"{info.get('width')}x{info.get('height')}")
                continue
            records.append(self._index_annotations(image_id, path, height, width, skipped))
        if problems:
            raise DatasetError(f"{self.source}: {len(problems)} unreadable images: " + "; ".join(problems[:5]))
        return records, skipped

    def _index_annotations(self, image_id: int, path: Path, height: int, width: int, skipped: dict) -> _ImageRecord:
        record = _ImageRecord(image_id, path, height, width, instances={}, mentioned=set())
        for annotation in self.coco.imgToAnns.get(image_id, []):
            category_id = int(annotation.get("category_id", -1))
            if category_id not in self.categories:
                raise DatasetError(f"{self.source}: annotation {annotation.get('id')} (image {image_id}) has "
                                   f"unknown category id {category_id}")
            record.mentioned.add(category_id)
            if annotation.get("iscrowd", 0):
                skipped["crowd"] += 1
                continue
            rle = annotation_rle(annotation, height, width)
            if rle is not None and list(rle["size"]) != [height, width]:
                raise DatasetError(f"{self.source}: annotation {annotation.get('id')} has a mask of size "
                                   f"{list(rle['size'])} but image {image_id} is {height}x{width} (HxW)")
            if rle is None or int(mask_utils.area(rle)) == 0:
                skipped["zero_area"] += 1
                continue
            record.instances.setdefault(category_id, []).append(rle)
        return record

    def _negative_candidates(self, record: _ImageRecord) -> list[int]:
        return [c for c in self.categories if c not in record.mentioned]

    def _count(self) -> DatasetSummary:
        per_concept = {name: 0 for name in self.categories.values()}
        positives = negatives = 0
        for record in self.records:
            for category_id, rles in record.instances.items():
                per_concept[self.categories[category_id]] += len(rles)
            positives += len(record.instances)
            negatives += min(self.negatives_per_image, len(self._negative_candidates(record)))
        return DatasetSummary(
            source=str(self.source),
            images=len(self.records),
            images_without_instances=sum(1 for r in self.records if not r.instances),
            instances_per_concept=per_concept,
            positive_queries=positives,
            negative_queries=negatives,
            skipped_crowd=self._skipped["crowd"],
            skipped_zero_area=self._skipped["zero_area"],
            concepts_without_examples=[name for name, count in per_concept.items() if count == 0],
        )

    def _build_queries(self, epoch: int) -> list[FindQuery]:
        return [query for record in self.records for query in self.queries_of(record, epoch)]

    def queries_of(self, record: _ImageRecord, epoch: int) -> list[FindQuery]:
        """The find-queries of one image in `epoch`: its concepts (sorted by id), then its negatives
        (drawn from (seed, epoch, image id))."""
        queries = [FindQuery(record.image_id, category_id, self.categories[category_id], True)
                   for category_id in sorted(record.instances)]
        candidates = self._negative_candidates(record)
        if candidates and self.negatives_per_image:
            order = torch.randperm(len(candidates), generator=seeded_generator(self.seed, epoch, record.image_id))
            for i in order[: self.negatives_per_image].tolist():
                queries.append(FindQuery(record.image_id, candidates[i], self.categories[candidates[i]], False))
        return queries

    def tokens_of(self, phrase: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids [32], attention_mask [32]) of a category's phrase, tokenised once at construction."""
        return self._tokens[phrase]

    def set_epoch(self, epoch: int) -> None:
        """Re-draw the negatives (and the augmentation stream) for `epoch`; len() does not change."""
        self.epoch = int(epoch)
        self.queries = self._build_queries(self.epoch)

    def summary(self) -> DatasetSummary:
        return self._summary

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, index: int) -> dict:
        query = self.queries[index]
        record = self._records_by_id[query.image_id]
        pixels = load_model_pixels(record.path, self.image_size)
        rles = record.instances.get(query.category_id, []) if query.positive else []
        if rles:
            masks = rles_at_size(rles, self.image_size)
        else:
            masks = torch.zeros((0, self.image_size, self.image_size), dtype=torch.bool)
        if self.augment is not None:
            generator = seeded_generator(self.seed, self.epoch, query.image_id, query.category_id, 1)
            pixels, masks, boxes = augment_find_query(pixels, masks, self.augment, generator)
        else:
            boxes = mask_boxes_cxcywh(masks)
        input_ids, attention_mask = self._tokens[query.phrase]
        return {
            "pixel_values": pixels,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "target": {"boxes": boxes, "masks": masks, "image_id": query.image_id,
                       "category_id": query.category_id, "phrase": query.phrase},
        }


def collate_find_queries(items: list[dict]) -> dict:
    """Dataset items -> the batch contract (module docstring); targets stay a list (T_i varies, may be 0)."""
    if not items:
        raise ValueError("cannot collate an empty list of find-queries")
    sizes = {tuple(item["pixel_values"].shape) for item in items}
    if len(sizes) != 1:
        raise ValueError(f"find-queries of one batch must share the image size, got {sorted(sizes)}")
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "input_ids": torch.stack([item["input_ids"] for item in items]).long(),
        "attention_mask": torch.stack([item["attention_mask"] for item in items]).long(),
        "targets": [item["target"] for item in items],
    }


def build_loader(
    dataset: FindQueryDataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    distributed: bool = False,
) -> DataLoader:
    """DataLoader of collated find-queries, reproducible from (seed, epoch).

    Always a DistributedSampler (1 replica when single-process): its order is a
    permutation seeded by seed + epoch, so a run resumed at epoch e sees the same
    batches as an uninterrupted one. Under DDP (distributed=True and a process group
    initialised) rank/world come from torch.distributed; each rank gets
    ceil(len/world) items (the sampler pads by repeating a few). Call
    `set_loader_epoch(loader, epoch)` before each epoch. Workers are not persistent,
    so they copy the dataset (and its epoch) afresh each epoch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    world, rank = 1, 0
    if distributed:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        else:
            log.warning("distributed loader requested without a process group; using one replica")
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_find_queries,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Point the sampler's shuffle and the dataset's negatives/augmentation at `epoch`."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
