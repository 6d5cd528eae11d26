"""The click tracker on the tiny SAM3: shared-ViT features equal Sam3TrackerModel's own forward,
one ViT pass serves Find all and clicks, a vision LoRA reaches clicks, prompts are checked."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import Sam3TrackerModel

from sam3_lora.interactive import TRACKER_SUBFOLDER, load_tracker, segment_object
from sam3_lora.predict import BackboneCache, load_predictor, predict
from sam3_lora.preprocess import image_to_tensor, normalize_pixels

HEIGHT, WIDTH = 75, 130  # non-square, not a multiple of 112


@pytest.fixture(scope="module")
def pair(tiny_model_dir):
    model, tokenizer = load_predictor(tiny_model_dir)
    return model, tokenizer, load_tracker(tiny_model_dir)


def random_image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def test_shared_vit_path_equals_the_trackers_own_forward(pair, tiny_model_dir):
    model, _, tracker = pair
    assert tracker.vision_encoder.backbone is None, "the tracker's ViT copy is dropped"
    full = Sam3TrackerModel.from_pretrained(tiny_model_dir / TRACKER_SUBFOLDER).eval()
    image = random_image()
    points, labels = [(20.0, 30.0), (100.0, 50.0)], [1, 0]
    side = full.prompt_encoder.input_image_size
    scaled = torch.tensor(points) * torch.tensor([side / WIDTH, side / HEIGHT])
    with torch.no_grad():
        expected = full(pixel_values=normalize_pixels(image_to_tensor(image), side)[None],
                        input_points=scaled[None, None], input_labels=torch.tensor([[labels]]), multimask_output=True)
    found = segment_object(model, tracker, image, points, labels, multimask=True)
    order = torch.argsort(expected.iou_scores[0, 0], descending=True)
    assert [round(inst.score, 4) for inst in found] == [round(float(v), 4) for v in expected.iou_scores[0, 0, order].clamp(0, 1)]
    for inst, index in zip(found, order.tolist()):
        mask = F.interpolate(expected.pred_masks[0, 0, index][None, None], size=(HEIGHT, WIDTH), mode="bilinear")[0, 0] > 0
        assert np.array_equal(inst.mask, mask.numpy())
        assert inst.mask.shape == (HEIGHT, WIDTH)


def test_one_vit_pass_per_image_for_find_all_and_clicks(pair):
    model, tokenizer, tracker = pair
    cache, tracker_cache = BackboneCache(), BackboneCache()
    image = random_image(1)
    predict(model, tokenizer, image, "crack", cache=cache)
    lone = segment_object(model, tracker, image, [(10, 10)], [1], cache=cache, tracker_cache=tracker_cache)
    refined = segment_object(model, tracker, image, [(10, 10), (60, 40)], [1, 0], mask=lone[0].mask,
                             cache=cache, tracker_cache=tracker_cache)
    boxed = segment_object(model, tracker, image, box=(5, 5, 50, 40), cache=cache, tracker_cache=tracker_cache)
    assert cache.misses == 1 and cache.hits == 1, "the ViT ran once; the tracker reused Find all's features"
    assert tracker_cache.misses == 1 and tracker_cache.hits == 2
    assert len(lone) == 3, "a lone click is ambiguous: three candidates"
    assert [inst.score for inst in lone] == sorted((inst.score for inst in lone), reverse=True)
    assert len(refined) == 1 and len(boxed) == 1
    without_mask = segment_object(model, tracker, image, [(10, 10), (60, 40)], [1, 0], cache=cache, tracker_cache=tracker_cache)
    assert refined[0].score != without_mask[0].score, "the mask prompt reaches the tracker"


def test_a_vision_lora_changes_clicks_too(pair):
    model, _, tracker = pair
    image = random_image(2)
    before = segment_object(model, tracker, image, [(30, 30)], [1])
    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=r".*vision_encoder\.backbone\.layers\.\d+\.attention\.(q|k|v|o)_proj"))
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    after = segment_object(lora.eval(), tracker, image, [(30, 30)], [1])
    assert [inst.score for inst in after] != [inst.score for inst in before]
    with lora.disable_adapter():
        assert [inst.score for inst in segment_object(lora, tracker, image, [(30, 30)], [1])] == [inst.score for inst in before]
    lora.unload()


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"points": [(1, 2)], "labels": [1, 1]}, "2 click labels"),
    ({"points": [(1, 2)], "labels": [2]}, "click 0 has label 2"),
    ({"points": [(500, 2)], "labels": [1]}, "outside the 130x75 image"),
    ({"box": (10, 10, 5, 20)}, "x2 > x1"),
    ({}, "give a click or a box"),
    ({"points": [(1, 2)], "labels": [1], "mask": np.zeros((4, 4), bool)}, "mask prompt is (4, 4)"),
])
def test_bad_prompts_are_refused_by_name(pair, kwargs, words):
    model, _, tracker = pair
    with pytest.raises(ValueError, match=None) as error:
        segment_object(model, tracker, random_image(), **kwargs)
    assert words in str(error.value)
