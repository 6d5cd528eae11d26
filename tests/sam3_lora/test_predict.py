"""predict / predict_many on the tiny SAM3, checked against a direct Sam3Model forward."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from sam3_lora.model import load_sam3, tokenize_phrases
from sam3_lora.nms import box_iou_matrix, box_nms, mask_nms
from sam3_lora.predict import (
    BackboneCache,
    Instance,
    load_predictor,
    predict,
    predict_many,
)
from sam3_lora.preprocess import image_to_tensor, normalize_pixels
from sam3_lora.roi_align import ensure_box_prompt_support

HEIGHT, WIDTH = 75, 130  # non-square, not a multiple of the model's 112
FEATURE_SIDE = 112 // 14  # the FPN level the geometry encoder pools from (scale 1)


@pytest.fixture(scope="module")
def sam3(tiny_model_dir):
    return load_sam3(tiny_model_dir)


def random_image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def direct_forward(model, tokenizer, image, phrase, **geometry):
    """Reference: one plain Sam3Model forward on the whole image, no cache, no predict code."""
    with torch.no_grad():
        pixel_values = normalize_pixels(image_to_tensor(image), 112)[None]
        return model(pixel_values=pixel_values, **tokenize_phrases(tokenizer, [phrase]), **geometry)


def direct_scores(outputs) -> torch.Tensor:
    return outputs.pred_logits[0].sigmoid() * outputs.presence_logits[0].sigmoid()


def count_backbone_calls(model) -> list[int]:
    calls = [0]
    model.vision_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def same_instances(first: list[Instance], second: list[Instance]) -> bool:
    return len(first) == len(second) and all(
        np.array_equal(a.mask, b.mask) and a.box == b.box and a.score == b.score and a.phrase == b.phrase
        for a, b in zip(first, second)
    )


def test_instances_have_the_original_size_and_the_product_score(sam3):
    model, tokenizer = sam3
    image = random_image()
    instances = predict(model, tokenizer, image, "cat", score_threshold=0.0, nms=None)
    outputs = direct_forward(model, tokenizer, image, "cat")
    expected = direct_scores(outputs)
    assert len(instances) == expected.numel() == 10
    scores = torch.tensor([inst.score for inst in instances])
    assert torch.all((scores >= 0) & (scores <= 1))
    assert torch.allclose(scores, expected.sort(descending=True).values, atol=1e-6)
    top = int(expected.argmax())
    full_logits = F.interpolate(outputs.pred_masks[0, top][None, None], size=(HEIGHT, WIDTH), mode="bilinear")
    for inst in instances:
        assert inst.mask.shape == (HEIGHT, WIDTH) and inst.mask.dtype == bool
        assert inst.phrase == "cat"
        x1, y1, x2, y2 = inst.box
        assert 0 <= x1 <= x2 <= WIDTH and 0 <= y1 <= y2 <= HEIGHT
    assert np.array_equal(instances[0].mask, (full_logits[0, 0] > 0).numpy())
    expected_box = outputs.pred_boxes[0, top].clamp(0, 1) * torch.tensor([WIDTH, HEIGHT, WIDTH, HEIGHT])
    assert torch.allclose(torch.tensor(instances[0].box), expected_box, atol=1e-4)


def test_score_threshold_keeps_scores_at_or_above_it(sam3):
    model, tokenizer = sam3
    image = random_image()
    ranked = direct_scores(direct_forward(model, tokenizer, image, "cat")).sort(descending=True).values
    kept = predict(model, tokenizer, image, "cat", score_threshold=float(ranked[3]), nms=None)
    assert len(kept) == 4
    assert predict(model, tokenizer, image, "cat", score_threshold=min(float(ranked[0]) + 1e-3, 1.0), nms=None) == []


def test_nms_removes_overlaps_as_box_and_mask_nms_say(sam3):
    model, tokenizer = sam3
    image = random_image()
    outputs = direct_forward(model, tokenizer, image, "cat")
    scores = direct_scores(outputs)
    boxes = outputs.pred_boxes[0] * torch.tensor([WIDTH, HEIGHT, WIDTH, HEIGHT])

    by_box = predict(model, tokenizer, image, "cat", score_threshold=0.0, nms="box", nms_iou=0.5)
    expected_box_keep = box_nms(boxes, scores, 0.5)
    assert 0 < len(by_box) == len(expected_box_keep) < 10  # the tiny model's boxes overlap: NMS does remove some
    assert torch.allclose(torch.tensor([i.score for i in by_box]), scores[expected_box_keep], atol=1e-6)
    kept_iou = box_iou_matrix(torch.tensor([i.box for i in by_box]), torch.tensor([i.box for i in by_box]))
    assert torch.all(kept_iou.fill_diagonal_(0) <= 0.5)

    by_mask = predict(model, tokenizer, image, "cat", score_threshold=0.0, nms="mask", nms_iou=0.5)
    expected_mask_keep = mask_nms(outputs.pred_masks[0] > 0, scores, 0.5)
    assert 0 < len(by_mask) == len(expected_mask_keep) < 10
    assert torch.allclose(torch.tensor([i.score for i in by_mask]), scores[expected_mask_keep], atol=1e-6)

    assert len(predict(model, tokenizer, image, "cat", score_threshold=0.0, nms="box", nms_iou=1.0)) == 10


def test_box_prompts_run_through_the_pure_torch_roi_align(sam3, monkeypatch):
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision is installed: the real roi_align serves box prompts")
    except ImportError:
        pass
    model, tokenizer = sam3
    image = random_image()
    assert ensure_box_prompt_support() == "pure-torch"
    modeling_sam3 = importlib.import_module("transformers.models.sam3.modeling_sam3")
    fallback = modeling_sam3.torchvision.ops.roi_align
    seen = []

    def counting_roi_align(features, boxes, output_size, *args, **kwargs):
        seen.append((features.shape, [b.clone() for b in boxes]))
        return fallback(features, boxes, output_size, *args, **kwargs)

    monkeypatch.setattr(modeling_sam3.torchvision.ops, "roi_align", counting_roi_align)
    boxes = [(13.0, 15.0, 65.0, 60.0), (70.0, 10.0, 120.0, 60.0)]
    instances = predict(model, tokenizer, image, None, boxes=boxes, box_labels=[1, 0], score_threshold=0.0, nms=None)
    assert len(seen) == 1 and len(instances) == 10
    features_shape, pooled_boxes = seen[0]
    assert tuple(features_shape) == (1, 32, FEATURE_SIDE, FEATURE_SIDE)
    # xyxy pixels -> / (W, H) -> cxcywh for the model -> back to xyxy times the feature side inside modeling_sam3
    expected = torch.tensor(boxes) / torch.tensor([WIDTH, HEIGHT, WIDTH, HEIGHT]) * FEATURE_SIDE
    assert torch.allclose(pooled_boxes[0], expected, atol=1e-5)
    assert {inst.phrase for inst in instances} == {"visual"}

    # the same prompt sent by hand, as Sam3Processor would: normalised cxcywh, labels 1 / 0
    normalised = torch.tensor(boxes) / torch.tensor([WIDTH, HEIGHT, WIDTH, HEIGHT])
    cxcywh = torch.cat([(normalised[:, :2] + normalised[:, 2:]) / 2, normalised[:, 2:] - normalised[:, :2]], 1)
    outputs = direct_forward(model, tokenizer, image, "visual", input_boxes=cxcywh[None],
                             input_boxes_labels=torch.tensor([[1, 0]]))
    expected_scores = direct_scores(outputs).sort(descending=True).values
    assert torch.allclose(torch.tensor([i.score for i in instances]), expected_scores, atol=1e-6)
    text_only = predict(model, tokenizer, image, "visual", score_threshold=0.0, nms=None)
    assert not torch.allclose(torch.tensor([i.score for i in text_only]), expected_scores, atol=1e-6)


def test_second_prompt_on_the_same_image_skips_the_backbone(tiny_model_dir):
    model, tokenizer = load_sam3(tiny_model_dir)
    calls = count_backbone_calls(model)
    cache = BackboneCache(max_images=2)
    image, other, third = random_image(0), random_image(1), random_image(2)
    predict(model, tokenizer, image, "cat", cache=cache)
    assert calls[0] == 1
    cached = predict(model, tokenizer, image, "dog", score_threshold=0.0, cache=cache)
    assert calls[0] == 1 and cache.hits == 1
    predict_many(model, tokenizer, image, ["cat", "dog"], cache=cache)
    assert calls[0] == 1
    uncached = predict(model, tokenizer, image, "dog", score_threshold=0.0)
    assert calls[0] == 2
    assert len(cached) > 0 and same_instances(cached, uncached)
    predict(model, tokenizer, other, "dog", cache=cache)   # new image: backbone runs
    predict(model, tokenizer, third, "dog", cache=cache)   # evicts `image` (LRU of 2)
    assert calls[0] == 4 and len(cache) == 2
    predict(model, tokenizer, image, "dog", cache=cache)
    assert calls[0] == 5


def test_peft_model_applies_its_adapter_and_the_cache_tells_adapters_apart(tiny_model_dir, tmp_path):
    base, tokenizer = load_sam3(tiny_model_dir)
    reference, _ = load_sam3(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,  # random B: the adapter changes outputs
                        target_modules=r"(?:vision_encoder\.backbone\.layers\.\d+\.attention\.(?:q|v)_proj"
                                       r"|detr_decoder\.layers\.\d+\.self_attn\.(?:q|v)_proj)")
    peft_model = get_peft_model(base, config)
    peft_model.eval()
    calls = count_backbone_calls(peft_model.get_base_model())
    cache = BackboneCache()
    image = random_image()
    adapted = predict(peft_model, tokenizer, image, "cat", score_threshold=0.0, nms=None, cache=cache)
    with peft_model.disable_adapter():
        plain = predict(peft_model, tokenizer, image, "cat", score_threshold=0.0, nms=None, cache=cache)
    assert calls[0] == 2  # vision LoRA on vs off: different features, no stale hit
    expected = predict(reference, tokenizer, image, "cat", score_threshold=0.0, nms=None)
    assert same_instances(plain, expected)
    assert not np.allclose([i.score for i in adapted], [i.score for i in expected], atol=1e-6)

    peft_model.save_pretrained(tmp_path / "adapter")
    loaded, _ = load_predictor(tiny_model_dir, adapter=tmp_path / "adapter")
    assert same_instances(predict(loaded, tokenizer, image, "cat", score_threshold=0.0, nms=None), adapted)
    merged, _ = load_predictor(tiny_model_dir, adapter=tmp_path / "adapter", merge=True)
    merged_scores = [i.score for i in predict(merged, tokenizer, image, "cat", score_threshold=0.0, nms=None)]
    assert np.allclose(merged_scores, [i.score for i in adapted], atol=1e-5)


def test_predict_many_equals_one_prompt_at_a_time(sam3):
    model, tokenizer = sam3
    image = random_image()
    phrases = ["cat", "red car", "dog", "a person on a bike"]
    batched = predict_many(model, tokenizer, image, phrases, score_threshold=0.0, nms=None, batch_size=3)
    assert len(batched) == len(phrases)
    for phrase, instances in zip(phrases, batched):
        single = predict(model, tokenizer, image, phrase, score_threshold=0.0, nms=None)
        assert [i.phrase for i in instances] == [phrase] * 10
        assert np.allclose([i.score for i in instances], [i.score for i in single], atol=1e-5)
        agreement = np.mean([np.mean(a.mask == b.mask) for a, b in zip(instances, single)])
        assert agreement > 0.999


def test_eval_mode_for_the_call_and_the_callers_mode_restored(tiny_model_dir):
    model, tokenizer = load_sam3(tiny_model_dir)
    image = random_image()
    expected = predict(model, tokenizer, image, "cat", score_threshold=0.0, nms=None)
    model.train()
    seen_training = []
    model.detr_decoder.register_forward_hook(lambda module, *_: seen_training.append(module.training))
    during_training = predict(model, tokenizer, image, "cat", score_threshold=0.0, nms=None)
    assert seen_training == [False] and model.training
    assert same_instances(during_training, expected)


def test_bad_requests_name_the_problem(sam3):
    model, tokenizer = sam3
    image = random_image()
    with pytest.raises(ValueError, match="nothing to look for"):
        predict(model, tokenizer, image, None)
    with pytest.raises(ValueError, match="prompt is empty"):
        predict(model, tokenizer, image, "  ")
    with pytest.raises(ValueError, match="box 1 .* is empty"):
        predict(model, tokenizer, image, "cat", boxes=[(0, 0, 10, 10), (20, 5, 20, 30)])
    with pytest.raises(ValueError, match="box 0 has label 2"):
        predict(model, tokenizer, image, "cat", boxes=[(0, 0, 10, 10)], box_labels=[2])
    with pytest.raises(ValueError, match="nms must be one of"):
        predict(model, tokenizer, image, "cat", nms="soft")
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        predict_many(model, tokenizer, image, ["cat", ""])


def test_bfloat16_model_with_box_prompts(tiny_model_dir, sam3):
    model32, tokenizer = sam3
    model16, _ = load_sam3(tiny_model_dir, dtype=torch.bfloat16)
    image = random_image()
    kwargs = dict(boxes=[(10, 5, 60, 40)], score_threshold=0.0, nms=None)
    low = predict(model16, tokenizer, image, "cat", **kwargs)   # geometry encoder casts bf16 -> fp16 for roi_align
    full = predict(model32, tokenizer, image, "cat", **kwargs)
    assert all(inst.mask.dtype == bool and inst.mask.shape == (HEIGHT, WIDTH) for inst in low)
    assert np.allclose([i.score for i in low], [i.score for i in full], atol=5e-3)
