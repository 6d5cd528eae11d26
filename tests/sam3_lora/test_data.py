"""Find-query dataset, collate, loader, split and augmentation, on a hand-made COCO."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from sam3_lora.augment import AugmentSettings, augment_find_query, hflip, mask_boxes_cxcywh, rescale
from sam3_lora.coco import DatasetError, annotation_rle
from sam3_lora.data import (
    FindQueryDataset,
    build_loader,
    collate_find_queries,
    set_loader_epoch,
    split_image_ids,
)
from sam3_lora.tiny import build_tiny_tokenizer

S = 40
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}, {"id": 4, "name": "fish"}]


def rle_of(height: int, width: int, rows: slice, cols: slice) -> dict:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[rows, cols] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def write_coco(folder: Path, images: list[tuple[int, int, int]], annotations: list[dict], categories=CATEGORIES) -> Path:
    """images: (id, width, height); writes grey PNGs and annotations.json; returns the json path."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for image_id, width, height in images:
        Image.new("RGB", (width, height), (100, 120, 140)).save(folder / "images" / f"{image_id}.png")
        entries.append({"id": image_id, "file_name": f"{image_id}.png", "width": width, "height": height})
    for index, annotation in enumerate(annotations):
        annotation.setdefault("id", index + 1)
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("segmentation", [])
        annotation.setdefault("bbox", [0, 0, 0, 0])
        annotation.setdefault("area", 0)
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture
def hand_made(tmp_path) -> Path:
    """Image 1 (40x20): 2 cats (RLE, polygon), 1 dog (bbox only), 1 crowd bird.
    Image 2 (40x40): 1 dog, 1 zero-area cat. Image 3 (30x30): nothing. 'fish' never appears."""
    return write_coco(
        tmp_path,
        images=[(1, 40, 20), (2, 40, 40), (3, 30, 30)],
        annotations=[
            {"image_id": 1, "category_id": 1, "segmentation": rle_of(20, 40, slice(2, 6), slice(4, 12))},
            {"image_id": 1, "category_id": 1, "segmentation": [[20, 2, 30, 2, 30, 10, 20, 10]]},
            {"image_id": 1, "category_id": 2, "bbox": [30, 12, 6, 4]},
            {"image_id": 1, "category_id": 3, "iscrowd": 1, "segmentation": rle_of(20, 40, slice(0, 10), slice(0, 10))},
            {"image_id": 2, "category_id": 2, "segmentation": rle_of(40, 40, slice(10, 20), slice(10, 30))},
            {"image_id": 2, "category_id": 1, "bbox": [5, 5, 0, 3]},
        ],
    )


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def items_by_query(dataset) -> dict[tuple[int, int], dict]:
    return {(q.image_id, q.category_id): dataset[i] for i, q in enumerate(dataset.queries)}


def test_summary_counts_hand_made_coco(hand_made, tokenizer):
    summary = FindQueryDataset(hand_made, hand_made.parent / "images", tokenizer, S, negatives_per_image=10).summary()
    assert summary.images == 3 and summary.images_without_instances == 1
    assert summary.instances_per_concept == {"cat": 2, "dog": 2, "bird": 0, "fish": 0}
    assert summary.instances == 4
    assert summary.positive_queries == 3  # image 1: cat, dog; image 2: dog
    # Negatives: image 1 {fish} (bird is there as crowd); image 2 {bird, fish} (cat is there, zero-area); image 3 all 4.
    assert summary.negative_queries == 1 + 2 + 4
    assert (summary.skipped_crowd, summary.skipped_zero_area) == (1, 1)
    assert summary.concepts_without_examples == ["bird", "fish"]
    assert summary.to_dict()["instances"] == 4


def test_queries_positives_and_negatives_follow_the_annotations(hand_made, tokenizer):
    dataset = FindQueryDataset(hand_made, hand_made.parent / "images", tokenizer, S, negatives_per_image=10)
    assert len(dataset) == 10
    negatives = {}
    for query in dataset.queries:
        if not query.positive:
            negatives.setdefault(query.image_id, set()).add(query.phrase)
    assert negatives == {1: {"fish"}, 2: {"bird", "fish"}, 3: {"cat", "dog", "bird", "fish"}}
    items = items_by_query(dataset)
    assert items[(1, 1)]["target"]["boxes"].shape == (2, 4)
    for (image_id, category_id), item in items.items():
        target = item["target"]
        positive = (image_id, category_id) in {(1, 1), (1, 2), (2, 2)}
        assert target["masks"].shape[0] == target["boxes"].shape[0] == (len(target["masks"]) if positive else 0)
        assert target["phrase"] == CATEGORIES[category_id - 1]["name"]
        assert item["input_ids"].shape == item["attention_mask"].shape == (32,)


def test_target_boxes_are_the_cxcywh_boxes_of_the_masks(hand_made, tokenizer):
    dataset = FindQueryDataset(hand_made, hand_made.parent / "images", tokenizer, S, negatives_per_image=0)
    items = items_by_query(dataset)
    for item in items.values():
        masks, boxes = item["target"]["masks"], item["target"]["boxes"]
        assert masks.dtype == torch.bool and masks.shape[1:] == (S, S)
        assert torch.equal(boxes, mask_boxes_cxcywh(masks))
    # Cat A: rows 2..5, cols 4..11 of a 40x20 image -> rows 4..11 at 40x40: box [4,12) x [4,12) pixels.
    cat_boxes = items[(1, 1)]["target"]["boxes"]
    assert torch.allclose(cat_boxes[0], torch.tensor([0.2, 0.2, 0.2, 0.2]))
    # The dog of image 2 has COCO bbox [10,10,20,10] at 40x40: cx=(10+30)/2/40, cy=(10+20)/2/40, w=20/40, h=10/40.
    assert torch.allclose(items[(2, 2)]["target"]["boxes"], torch.tensor([[0.5, 0.375, 0.5, 0.25]]))
    # A bbox-only annotation becomes its rectangle: dog [30,12,6,4] in 40x20 -> x [30,36), y [24,32) at 40x40.
    assert torch.allclose(items[(1, 2)]["target"]["boxes"], torch.tensor([[33 / 40, 28 / 40, 6 / 40, 8 / 40]]))


def test_every_coco_geometry_becomes_the_same_rle():
    """Polygon, uncompressed RLE, compressed RLE (str counts) and bbox of one 4x6 rectangle; degenerate -> None."""
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[2:6, 3:9] = 1
    compressed = mask_utils.encode(np.asfortranarray(mask))
    flat = mask.flatten(order="F")
    runs, value, length = [], 0, 0
    for pixel in flat:
        if pixel != value:
            runs.append(length)
            value, length = pixel, 0
        length += 1
    runs.append(length)
    geometries = [
        {"segmentation": [[3, 2, 9, 2, 9, 6, 3, 6]]},
        {"segmentation": {"size": [10, 12], "counts": runs}},
        {"segmentation": {"size": [10, 12], "counts": compressed["counts"].decode()}},
        {"segmentation": [], "bbox": [3, 2, 6, 4]},
    ]
    for annotation in geometries:
        assert np.array_equal(mask_utils.decode(annotation_rle(annotation, 10, 12)), mask), annotation
    assert annotation_rle({"segmentation": [[1, 1, 2, 2]], "bbox": [0, 0, 0, 5]}, 10, 12) is None


def test_object_smaller_than_an_input_pixel_keeps_one_pixel(tmp_path, tokenizer):
    path = write_coco(tmp_path, [(1, 80, 80)], [{"image_id": 1, "category_id": 1, "segmentation": rle_of(80, 80, slice(41, 42), slice(43, 44))}])
    item = FindQueryDataset(path, tmp_path / "images", tokenizer, 10, negatives_per_image=0)[0]
    masks = item["target"]["masks"]
    assert masks.shape == (1, 10, 10) and masks.sum() == 1 and masks[0, 5, 5]  # 41/8, 43/8 -> cell (5, 5)


def test_negatives_are_deterministic_per_seed_and_epoch(hand_made, tokenizer):
    def negatives(seed: int, epoch: int) -> list[tuple[int, int]]:
        dataset = FindQueryDataset(hand_made, hand_made.parent / "images", tokenizer, S, negatives_per_image=1, seed=seed)
        dataset.set_epoch(epoch)
        return [(q.image_id, q.category_id) for q in dataset.queries if not q.positive]

    assert negatives(0, 0) == negatives(0, 0)
    assert negatives(0, 3) == negatives(0, 3)
    by_epoch = [negatives(0, epoch) for epoch in range(8)]
    assert all(len(n) == 3 for n in by_epoch)  # one per image, every epoch
    assert len({tuple(n) for n in by_epoch}) > 1  # image 3 has 4 candidates: the draw changes with the epoch
    assert any(negatives(1, e) != negatives(0, e) for e in range(8))


def test_zero_instances_is_a_loud_error(tmp_path, tokenizer):
    path = write_coco(tmp_path, [(1, 20, 20)], [
        {"image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": rle_of(20, 20, slice(0, 5), slice(0, 5))},
        {"image_id": 1, "category_id": 2, "bbox": [3, 3, 0, 0]},
    ])
    with pytest.raises(DatasetError, match=r"0 instances loaded from .*annotations\.json: 1 images, 2 annotations .*1 crowd, 1 zero-area"):
        FindQueryDataset(path, tmp_path / "images", tokenizer, S)


def test_selected_images_without_instances_raise(hand_made, tokenizer):
    with pytest.raises(DatasetError, match="0 instances loaded"):
        FindQueryDataset(hand_made, hand_made.parent / "images", tokenizer, S, image_ids=[3])
    with pytest.raises(DatasetError, match=r"image ids \[99\]"):
        FindQueryDataset(hand_made, hand_made.parent / "images", tokenizer, S, image_ids=[1, 99])


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("unknown_category", "annotation 1 .* unknown category id 9"),
        ("missing_image", r"image 1 \(.*1\.png\)"),
        ("wrong_size", "is 20x20 but the annotations say 30x20"),
        ("duplicate_name", "'cat' is used by two ids"),
        ("bad_json", "cannot read COCO annotations"),
        ("rle_size", r"annotation 1 has a mask of size \[10, 10\] but image 1 is 20x20"),
    ],
)
def test_bad_input_is_refused_with_the_reason(tmp_path, tokenizer, breakage, message):
    annotations = [{"image_id": 1, "category_id": 9 if breakage == "unknown_category" else 1, "bbox": [1, 1, 5, 5]}]
    categories = CATEGORIES + [{"id": 5, "name": "cat"}] if breakage == "duplicate_name" else CATEGORIES
    path = write_coco(tmp_path, [(1, 20, 20)], annotations, categories)
    if breakage == "missing_image":
        (tmp_path / "images" / "1.png").unlink()
    if breakage == "wrong_size":
        data = json.loads(path.read_text())
        data["images"][0]["width"] = 30
        path.write_text(json.dumps(data))
    if breakage == "rle_size":
        data = json.loads(path.read_text())
        data["annotations"][0]["segmentation"] = rle_of(10, 10, slice(1, 3), slice(1, 3))
        path.write_text(json.dumps(data))
    if breakage == "bad_json":
        path.write_text("{not json")
    with pytest.raises(DatasetError, match=message):
        FindQueryDataset(path, tmp_path / "images", tokenizer, S)


def test_collate_keeps_negative_elements_with_zero_targets(hand_made, tokenizer):
    dataset = FindQueryDataset(hand_made, hand_made.parent / "images", tokenizer, S, negatives_per_image=1)
    batch = collate_find_queries([dataset[i] for i in range(len(dataset))])
    assert batch["pixel_values"].shape == (6, 3, S, S) and batch["pixel_values"].dtype == torch.float32
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (6, 32)
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
    counts = [t["boxes"].shape[0] for t in batch["targets"]]
    assert sorted(counts) == [0, 0, 0, 1, 1, 2]
    for target in batch["targets"]:
        assert target["masks"].shape == (target["boxes"].shape[0], S, S) and target["masks"].dtype == torch.bool
        assert target["boxes"].dtype == torch.float32
    with pytest.raises(ValueError, match="empty"):
        collate_find_queries([])


def test_split_image_ids_is_deterministic_and_disjoint():
    ids = list(range(10, 30))
    train, val = split_image_ids(ids, 0.2, seed=3)
    assert (train, val) == split_image_ids(list(reversed(ids)), 0.2, seed=3)
    assert len(val) == 4 and sorted(train + val) == ids and not set(train) & set(val)
    assert split_image_ids(ids, 0.2, seed=4) != (train, val)
    assert split_image_ids([1, 2], 0.01, seed=0)[1] != []  # at least one val image
    assert split_image_ids([1, 2], 0.99, seed=0)[0] != []  # and at least one train image
    assert split_image_ids(ids, 0.0, seed=0) == (ids, [])
    assert split_image_ids([5], 0.5, seed=0) == ([5], [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_image_ids(ids, 1.0, seed=0)


def test_loader_order_depends_only_on_seed_and_epoch(hand_made, tokenizer):
    def order(seed: int, epoch: int) -> list[tuple[int, str]]:
        dataset = FindQueryDataset(hand_made, hand_made.parent / "images", tokenizer, S, negatives_per_image=10)
        loader = build_loader(dataset, batch_size=4, shuffle=True, seed=seed, distributed=True)  # no group: 1 replica
        set_loader_epoch(loader, epoch)
        return [(t["image_id"], t["phrase"]) for batch in loader for t in batch["targets"]]

    assert len(order(0, 0)) == 10
    assert order(0, 0) == order(0, 0) and order(0, 2) == order(0, 2)
    assert order(0, 0) != order(0, 1)
    dataset = FindQueryDataset(hand_made, hand_made.parent / "images", tokenizer, S, negatives_per_image=10)
    sequential = build_loader(dataset, batch_size=3, shuffle=False, seed=0)
    assert [(t["image_id"], t["category_id"]) for b in sequential for t in b["targets"]] == [
        (q.image_id, q.category_id) for q in dataset.queries
    ]


# ---- augmentation ----------------------------------------------------------------------------------------------


def square_masks(size: int, corners: list[tuple[int, int, int]]) -> torch.Tensor:
    masks = torch.zeros((len(corners), size, size), dtype=torch.bool)
    for i, (top, left, side) in enumerate(corners):
        masks[i, top : top + side, left : left + side] = True
    return masks


def painted(masks: torch.Tensor) -> torch.Tensor:
    """Normalised image [3,S,S]: +1 on object pixels, -1 elsewhere, so image and masks can be compared."""
    union = masks.any(dim=0) if len(masks) else torch.zeros(masks.shape[1:], dtype=torch.bool)
    return torch.where(union, 1.0, -1.0).expand(3, -1, -1).clone()


def test_mask_boxes_use_pixel_edges():
    masks = square_masks(10, [(2, 3, 4), (0, 0, 1)])
    assert torch.allclose(mask_boxes_cxcywh(masks), torch.tensor([[0.5, 0.4, 0.4, 0.4], [0.05, 0.05, 0.1, 0.1]]))
    with pytest.raises(ValueError, match=r"masks \[0\] are empty"):
        mask_boxes_cxcywh(torch.zeros((1, 4, 4), dtype=torch.bool))


def test_flip_twice_is_identity_and_mirrors_boxes():
    masks = square_masks(S, [(3, 5, 7), (20, 30, 6)])
    pixels = torch.randn(3, S, S)
    flipped_pixels, flipped_masks = hflip(pixels, masks)
    back_pixels, back_masks = hflip(flipped_pixels, flipped_masks)
    assert torch.equal(back_pixels, pixels) and torch.equal(back_masks, masks)
    boxes, flipped_boxes = mask_boxes_cxcywh(masks), mask_boxes_cxcywh(flipped_masks)
    assert torch.allclose(flipped_boxes[:, 0], 1 - boxes[:, 0]) and torch.allclose(flipped_boxes[:, 1:], boxes[:, 1:])


def test_rescale_crops_pads_and_drops_nothing_itself():
    masks = square_masks(S, [(0, 0, 4), (16, 16, 8)])
    pixels = painted(masks)
    # Zoom x2 keeping the bottom-right window (rows/cols 40..79 of 80): the top-left object leaves the
    # frame, the one at 16..23 (32..47 after zoom) lands at 0..7.
    zoomed_pixels, zoomed_masks = rescale(pixels, masks, 2.0, (1.0, 1.0))
    assert zoomed_masks.shape == masks.shape and not zoomed_masks[0].any()
    assert torch.equal(mask_boxes_cxcywh(zoomed_masks[1:]), torch.tensor([[0.1, 0.1, 0.2, 0.2]]))
    # Zoom x0.5 at the top-left: content in the top-left quarter, mid-grey (0) padding elsewhere.
    shrunk_pixels, shrunk_masks = rescale(pixels, masks, 0.5, (0.0, 0.0))
    assert torch.all(shrunk_pixels[:, 20:, :] == 0) and torch.all(shrunk_pixels[:, :, 20:] == 0)
    assert torch.allclose(mask_boxes_cxcywh(shrunk_masks), mask_boxes_cxcywh(masks) * 0.5)


def test_augmentation_moves_image_masks_and_boxes_together():
    settings = AugmentSettings(hflip_prob=0.5, scale_min=0.5, scale_max=2.0)
    masks = square_masks(S, [(1, 1, 6), (14, 10, 12), (30, 28, 8)])
    pixels = painted(masks)
    counts = set()
    for seed in range(40):
        out_pixels, out_masks, out_boxes = augment_find_query(pixels, masks, settings, torch.Generator().manual_seed(seed))
        counts.add(len(out_masks))
        assert out_pixels.shape == pixels.shape and out_masks.shape[1:] == (S, S)
        assert all(m.any() for m in out_masks)  # vanished instances are dropped
        assert torch.equal(out_boxes, mask_boxes_cxcywh(out_masks))
        if len(out_masks):  # the object pixels of the image are where the masks are
            # A mask pixel is at least a quarter object (a one-pixel shift would give -1, pure
            # background), and no pixel outside the masks is more object than background.
            union = out_masks.any(dim=0)
            assert out_pixels[0][union].min() >= -0.51
            assert out_pixels[0][~union].max() <= 0.01
    assert len(counts) > 1  # some crops lost an object, others kept all three


def test_augmentation_is_reproducible_from_the_generator(hand_made, tokenizer):
    settings = AugmentSettings()
    masks = square_masks(S, [(5, 5, 10)])
    first = augment_find_query(painted(masks), masks, settings, torch.Generator().manual_seed(7))
    second = augment_find_query(painted(masks), masks, settings, torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first, second))

    def dataset_items(seed: int, epoch: int):
        dataset = FindQueryDataset(hand_made, hand_made.parent / "images", tokenizer, S, augment=settings, seed=seed)
        dataset.set_epoch(epoch)
        return [dataset[i]["target"]["masks"] for i in range(len(dataset))]

    assert all(torch.equal(a, b) for a, b in zip(dataset_items(0, 1), dataset_items(0, 1)))
    changed = [not torch.equal(a, b) for a, b in zip(dataset_items(0, 1), dataset_items(0, 2)) if a.numel() or b.numel()]
    assert any(changed)


@pytest.mark.parametrize("kwargs", [{"hflip_prob": 1.5}, {"scale_min": 0.0}, {"scale_min": 1.5, "scale_max": 1.2}, {"scale_max": 9.0}])
def test_augment_settings_are_validated(kwargs):
    with pytest.raises(ValueError, match="hflip_prob|scale_min"):
        AugmentSettings(**kwargs)


@pytest.mark.parametrize("height, width, size", [(30, 40, 112), (37, 13, 16), (300, 400, 56)])
def test_bool_mask_resizing_equals_nearest_exact_on_floats(height, width, size):
    from sam3_lora.coco import masks_at_size, resize_masks_nearest, rles_at_size

    rng = np.random.default_rng(height)
    masks = (rng.random((3, height, width)) > 0.7).astype(np.uint8)
    masks[2] = 0
    masks[2, 1, 1] = 1  # one input pixel: may vanish under nearest sampling, then keeps its best pixel
    source = torch.from_numpy(masks).bool()
    expected = torch.nn.functional.interpolate(source[:, None].float(), size=(size, size), mode="nearest-exact")
    assert torch.equal(resize_masks_nearest(source, size, size), expected[:, 0].bool())
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    assert torch.equal(rles_at_size(rles, size), masks_at_size(masks, size))
    assert rles_at_size(rles, size).flatten(1).any(dim=1).all()
