"""The synthetic shapes COCO: valid masks and boxes, learnable cues, and it feeds the tiny SAM3."""
from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from sam3_lora.augment import AugmentSettings
from sam3_lora.data import FindQueryDataset, build_loader, collate_find_queries
from sam3_lora.model import load_sam3, model_image_size
from sam3_lora.synthetic import PALETTE, write_synthetic_coco


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic_coco(tmp_path_factory.mktemp("shapes"), num_images=24, image_size=112, seed=0)


def load(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_masks_are_non_empty_exact_and_match_their_boxes(synthetic):
    coco = load(synthetic)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "square", "triangle"]
    assert len(coco.getImgIds()) == 24 and len(coco.getAnnIds()) > 0
    for annotation in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(annotation)
        ys, xs = np.nonzero(mask)
        assert len(ys) > 0 and annotation["area"] == len(ys) and annotation["iscrowd"] == 0
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        assert annotation["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        assert min(x1 - x0, y1 - y0) >= 3  # non-degenerate


def test_shapes_occlude_and_carry_their_concept_colour(synthetic):
    coco = load(synthetic)
    empty_images = 0
    for image_info in coco.loadImgs(coco.getImgIds()):
        pixels = np.asarray(Image.open(synthetic.parent / "images" / image_info["file_name"]).convert("RGB")).astype(int)
        assert pixels.shape == (112, 112, 3)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_info["id"]))
        empty_images += not annotations
        masks = [coco.annToMask(a).astype(bool) for a in annotations]
        for a, b in itertools.combinations(masks, 2):
            assert not (a & b).any()  # a later shape cuts the masks of the shapes under it
        for annotation, mask in zip(annotations, masks):
            colours = np.unique(pixels[mask], axis=0)
            assert len(colours) == 1  # exactly the pixels of one drawn shape
            assert np.abs(colours[0] - np.array(PALETTE[annotation["category_id"] - 1])).max() <= 20
    assert empty_images >= 1


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    first = write_synthetic_coco(tmp_path / "a", num_images=6, image_size=64, seed=5)
    second = write_synthetic_coco(tmp_path / "b", num_images=6, image_size=64, seed=5)
    third = write_synthetic_coco(tmp_path / "c", num_images=6, image_size=64, seed=6)
    assert first.read_text() == second.read_text() != third.read_text()
    assert (first.parent / "images" / "000003.png").read_bytes() == (second.parent / "images" / "000003.png").read_bytes()


@pytest.mark.parametrize("kwargs", [{"concepts": ("circle", "dragon")}, {"concepts": ()}, {"num_images": 0}, {"image_size": 16}])
def test_bad_arguments_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError):
        write_synthetic_coco(tmp_path, **kwargs)


def test_rle_counts_round_trip(synthetic):
    coco = load(synthetic)
    annotation = coco.loadAnns(coco.getAnnIds())[0]
    rle = {"size": annotation["segmentation"]["size"], "counts": annotation["segmentation"]["counts"].encode()}
    assert list(mask_utils.toBbox(rle)) == annotation["bbox"]


def test_dataset_from_it_feeds_the_tiny_sam3(synthetic, tiny_model_dir):
    model, tokenizer = load_sam3(tiny_model_dir)
    size = model_image_size(model)
    dataset = FindQueryDataset(synthetic, synthetic.parent / "images", tokenizer, size, negatives_per_image=1,
                               augment=AugmentSettings())
    summary = dataset.summary()
    assert summary.images == 24 and summary.instances > 0 and summary.negative_queries > 0
    positive = next(i for i, q in enumerate(dataset.queries) if q.positive)
    negative = next(i for i, q in enumerate(dataset.queries) if not q.positive)
    batch = collate_find_queries([dataset[positive], dataset[negative]])
    assert batch["targets"][1]["boxes"].shape == (0, 4)
    with torch.no_grad():
        outputs = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"])
    queries = model.config.detr_decoder_config.num_queries
    assert outputs.pred_boxes.shape == (2, queries, 4) and outputs.pred_logits.shape == (2, queries)
    assert outputs.presence_logits.shape == (2, 1) and torch.isfinite(outputs.pred_masks).all()
    loader_batch = next(iter(build_loader(dataset, batch_size=4, shuffle=True, seed=0)))
    assert loader_batch["pixel_values"].shape == (4, 3, size, size)
