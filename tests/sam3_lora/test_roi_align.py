"""Pure-torch RoIAlign against hand-computed values and a scalar loop of the formula (not torchvision)."""
from __future__ import annotations

import importlib
import math
import types

import pytest
import torch

from sam3_lora.roi_align import ensure_box_prompt_support, roi_align


def ramp(height: int = 10, width: int = 10) -> torch.Tensor:
    """f[0] = 2y + 3x + 1, f[1] = -y + 0.5x: linear, so bilinear sampling is exact. [1,2,H,W]."""
    y = torch.arange(height, dtype=torch.float32)[:, None]
    x = torch.arange(width, dtype=torch.float32)[None, :]
    return torch.stack([2 * y + 3 * x + 1, -y + 0.5 * x + 0 * y])[None]


def test_constant_map_gives_the_constant():
    features = torch.full((1, 2, 6, 6), 3.0)
    out = roi_align(features, [torch.tensor([[1.0, 1.0, 5.0, 4.0]])], 2)
    assert out.shape == (1, 2, 2, 2)
    assert torch.allclose(out, torch.full_like(out, 3.0))


def test_linear_ramp_gives_the_ramp_at_bin_centres():
    # box (1,2)-(7,8), 3x3 bins of 2 px, 2x2 samples each; bin centres y = 3,5,7 and x = 2,4,6
    out = roi_align(ramp(), [torch.tensor([[1.0, 2.0, 7.0, 8.0]])], 3)
    expected = torch.tensor([[13.0, 19.0, 25.0], [17.0, 23.0, 29.0], [21.0, 27.0, 33.0]])  # 2y + 3x + 1
    assert torch.allclose(out[0, 0], expected)
    assert torch.allclose(out[0, 1], torch.tensor([[-2.0, -1.0, 0.0], [-4.0, -3.0, -2.0], [-6.0, -5.0, -4.0]]))


def test_aligned_shifts_by_half_a_pixel_and_spatial_scale_rescales():
    aligned = roi_align(ramp(), [torch.tensor([[1.0, 2.0, 7.0, 8.0]])], 3, aligned=True)
    # centres move by -0.5 in x and y: 2*(-0.5) + 3*(-0.5) = -2.5
    expected = torch.tensor([[10.5, 16.5, 22.5], [14.5, 20.5, 26.5], [18.5, 24.5, 30.5]])
    assert torch.allclose(aligned[0, 0], expected)
    scaled = roi_align(ramp(), [torch.tensor([[2.0, 4.0, 14.0, 16.0]])], (3, 3), spatial_scale=0.5)
    assert torch.allclose(scaled[0, 0], torch.tensor([[13.0, 19.0, 25.0], [17.0, 23.0, 29.0], [21.0, 27.0, 33.0]]))


def test_single_bin_average_of_a_peak():
    # 3x3 map with 9 in the middle; one bin over (0,0)-(2,2), samples at 0.5 and 1.5 on each axis:
    # each of the 4 samples puts bilinear weight 0.5*0.5 on the peak -> 9/4 each, average 2.25
    features = torch.zeros(1, 1, 3, 3)
    features[0, 0, 1, 1] = 9.0
    for ratio in (2, -1):  # adaptive grid: ceil(2 / 1) = 2 samples, the same
        out = roi_align(features, [torch.tensor([[0.0, 0.0, 2.0, 2.0]])], 1, sampling_ratio=ratio)
        assert out.item() == pytest.approx(2.25)


def test_samples_outside_the_map_read_zero_but_still_count():
    ones = torch.ones(1, 1, 3, 3)
    # samples at 2.5 (past the last row: reads row 2) and 3.5 (> H = 3: reads 0) on each axis -> 1 of 4
    assert roi_align(ones, [torch.tensor([[2.0, 2.0, 4.0, 4.0]])], 1, sampling_ratio=2).item() == pytest.approx(0.25)
    # samples at -1.0 (not < -1: clamped to row 0) and 0.0 -> all 4 read 1
    assert roi_align(ones, [torch.tensor([[-1.5, -1.5, 0.5, 0.5]])], 1, sampling_ratio=2).item() == pytest.approx(1.0)
    # samples at -1.5 (< -1: 0) and -0.5 (clamped to 0) -> 1 of 4
    assert roi_align(ones, [torch.tensor([[-2.0, -2.0, 0.0, 0.0]])], 1, sampling_ratio=2).item() == pytest.approx(0.25)


def test_degenerate_box_is_one_pixel_unless_aligned():
    point_box = [torch.tensor([[1.0, 1.0, 1.0, 1.0]])]
    # legacy: size clamped to 1, one sample at (1.5, 1.5): 2*1.5 + 3*1.5 + 1 = 8.5
    assert roi_align(ramp(), point_box, 1)[0, 0].item() == pytest.approx(8.5)
    # aligned: size 0 -> ceil(0) = 0 samples -> 0
    assert roi_align(ramp(), point_box, 1, aligned=True)[0, 0].item() == 0.0


def test_box_formats_and_batch_index():
    features = torch.stack([ramp()[0], -ramp()[0]])  # two images, the second negated
    per_image = [torch.tensor([[1.0, 2.0, 7.0, 8.0]]), torch.tensor([[1.0, 2.0, 7.0, 8.0], [0.0, 0.0, 4.0, 4.0]])]
    from_list = roi_align(features, per_image, 3)
    rows = torch.tensor([[0, 1.0, 2.0, 7.0, 8.0], [1, 1.0, 2.0, 7.0, 8.0], [1, 0.0, 0.0, 4.0, 4.0]])
    from_rows = roi_align(features, rows, 3)
    assert from_list.shape == (3, 2, 3, 3)
    assert torch.equal(from_list, from_rows)
    assert torch.allclose(from_list[1], -from_list[0])


def reference_roi_align(features, rois, out_h, out_w, scale, ratio, aligned):
    """The module docstring's formula as scalar loops."""
    _, channels, height, width = features.shape
    output = torch.zeros(rois.shape[0], channels, out_h, out_w, dtype=torch.float64)

    def bilinear(image, y, x):
        if y < -1.0 or y > height or x < -1.0 or x > width:
            return torch.zeros(channels, dtype=torch.float64)
        y, x = max(y, 0.0), max(x, 0.0)
        y0, x0 = int(y), int(x)
        if y0 >= height - 1:
            y0 = y1 = height - 1
            y = float(y0)
        else:
            y1 = y0 + 1
        if x0 >= width - 1:
            x0 = x1 = width - 1
            x = float(x0)
        else:
            x1 = x0 + 1
        ly, lx = y - y0, x - x0
        f = features[image].double()
        return ((1 - ly) * (1 - lx) * f[:, y0, x0] + (1 - ly) * lx * f[:, y0, x1]
                + ly * (1 - lx) * f[:, y1, x0] + ly * lx * f[:, y1, x1])

    for k, (image, x1, y1, x2, y2) in enumerate(rois.tolist()):
        offset = 0.5 if aligned else 0.0
        xs, ys = x1 * scale - offset, y1 * scale - offset
        w, h = x2 * scale - offset - xs, y2 * scale - offset - ys
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        gh = ratio if ratio > 0 else math.ceil(h / out_h)
        gw = ratio if ratio > 0 else math.ceil(w / out_w)
        for ph in range(out_h):
            for pw in range(out_w):
                total = torch.zeros(channels, dtype=torch.float64)
                for iy in range(gh):
                    for ix in range(gw):
                        y = ys + ph * h / out_h + (iy + 0.5) * h / out_h / gh
                        x = xs + pw * w / out_w + (ix + 0.5) * w / out_w / gw
                        total += bilinear(int(image), y, x)
                output[k, :, ph, pw] = total / max(gh * gw, 1)
    return output


@pytest.mark.parametrize("ratio,aligned,scale", [(-1, False, 1.0), (2, True, 0.5), (-1, True, 0.25), (3, False, 1.0)])
def test_matches_the_formula_on_random_maps_and_boxes(ratio, aligned, scale):
    generator = torch.Generator().manual_seed(7)
    features = torch.randn(2, 3, 7, 9, generator=generator)
    corners = torch.rand(6, 4, generator=generator) * torch.tensor([11.0, 9.0, 11.0, 9.0]) / scale - 1.0
    boxes = torch.cat([torch.minimum(corners[:, :2], corners[:, 2:]), torch.maximum(corners[:, :2], corners[:, 2:])], 1)
    rois = torch.cat([torch.tensor([[0.0], [1.0], [0.0], [1.0], [1.0], [0.0]]), boxes], dim=1)
    out = roi_align(features, rois, (2, 3), spatial_scale=scale, sampling_ratio=ratio, aligned=aligned)
    expected = reference_roi_align(features, rois, 2, 3, scale, ratio, aligned)
    assert torch.allclose(out.double(), expected, atol=1e-5)


def test_gradient_reaches_the_features_as_an_average():
    features = ramp().requires_grad_(True)
    out = roi_align(features, [torch.tensor([[1.0, 2.0, 7.0, 8.0], [0.0, 0.0, 9.0, 9.0]])], 3)
    out.sum().backward()
    # each output is a convex combination of pixels (all samples inside the map): weights sum to 1
    assert features.grad.sum().item() == pytest.approx(out.numel())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_keeps_the_input_dtype(dtype):
    out = roi_align(ramp().to(dtype), [torch.tensor([[1.0, 2.0, 7.0, 8.0]], dtype=dtype)], 3)
    assert out.dtype == dtype
    assert out[0, 0, 1, 1].item() == pytest.approx(23.0, rel=1e-2)


def test_bad_boxes_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"\[K,5\]"):
        roi_align(ramp(), torch.zeros(2, 4), 3)
    with pytest.raises(ValueError, match="image 1"):
        roi_align(ramp(), [torch.zeros(1, 4), torch.zeros(1, 3)], 3)
    with pytest.raises(ValueError, match=r"\[N,C,H,W\]"):
        roi_align(torch.zeros(3, 4, 4), [torch.zeros(1, 4)], 3)
    assert roi_align(ramp(), [torch.zeros(0, 4)], 3).shape == (0, 2, 3, 3)


def test_fallback_is_installed_only_without_torchvision(monkeypatch):
    modeling_sam3 = importlib.import_module("transformers.models.sam3.modeling_sam3")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        assert ensure_box_prompt_support() == "pure-torch"
        assert modeling_sam3.torchvision.ops.roi_align is roi_align
        assert ensure_box_prompt_support() == "pure-torch"  # idempotent
    else:
        assert ensure_box_prompt_support() == "torchvision"
        assert modeling_sam3.torchvision is torchvision

    real_looking = types.ModuleType("torchvision")  # what modeling_sam3 binds when torchvision is installed
    monkeypatch.setattr(modeling_sam3, "torchvision", real_looking, raising=False)
    assert ensure_box_prompt_support() == "torchvision"
    assert modeling_sam3.torchvision is real_looking
