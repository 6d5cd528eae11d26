"""Box conversions, IoU and GIoU against values worked out by hand."""
from __future__ import annotations

import pytest
import torch

from sam3_lora.box_ops import (
    box_cxcywh_to_xyxy,
    elementwise_box_iou,
    elementwise_generalized_box_iou,
    pairwise_box_iou,
    pairwise_generalized_box_iou,
)


def random_xyxy(count: int, generator: torch.Generator) -> torch.Tensor:
    corners = torch.rand(count, 2, 2, generator=generator)
    return torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)


def test_cxcywh_to_xyxy_matches_hand_values():
    cxcywh = torch.tensor([[0.5, 0.4, 0.2, 0.6]])
    assert torch.allclose(box_cxcywh_to_xyxy(cxcywh), torch.tensor([[0.4, 0.1, 0.6, 0.7]]))
    boxes = torch.rand(3, 5, 4)  # any leading shape
    assert box_cxcywh_to_xyxy(boxes).shape == (3, 5, 4)


def test_iou_and_giou_hand_values():
    left = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    shifted = torch.tensor([[0.25, 0.0, 0.75, 0.5]])  # overlap 0.125, union 0.375
    far = torch.tensor([[0.7, 0.0, 0.9, 0.5]])  # disjoint; enclosing 0.45, union 0.35
    iou, union = pairwise_box_iou(left, torch.cat([left, shifted, far]))
    assert torch.allclose(iou, torch.tensor([[1.0, 1 / 3, 0.0]]))
    assert torch.allclose(union, torch.tensor([[0.25, 0.375, 0.35]]))
    giou = pairwise_generalized_box_iou(left, torch.cat([left, shifted, far]))
    # shifted: enclosing box = union, so GIoU = IoU; far: 0 - (0.45 - 0.35) / 0.45
    assert torch.allclose(giou, torch.tensor([[1.0, 1 / 3, -0.1 / 0.45]]))


def test_elementwise_equals_the_diagonal_of_pairwise():
    generator = torch.Generator().manual_seed(0)
    boxes_a, boxes_b = random_xyxy(20, generator), random_xyxy(20, generator)
    iou, _ = elementwise_box_iou(boxes_a, boxes_b)
    assert torch.allclose(iou, pairwise_box_iou(boxes_a, boxes_b)[0].diagonal())
    giou = elementwise_generalized_box_iou(boxes_a, boxes_b)
    assert torch.allclose(giou, pairwise_generalized_box_iou(boxes_a, boxes_b).diagonal())
    assert (giou <= iou + 1e-6).all() and (giou >= -1).all() and (giou <= 1).all()


def test_degenerate_boxes_stay_finite_and_shapes_are_checked():
    line = torch.tensor([[0.2, 0.2, 0.2, 0.6]])  # zero width, as a one-pixel-thin object can give
    assert torch.isfinite(elementwise_generalized_box_iou(line, line)).all()
    assert torch.isfinite(pairwise_generalized_box_iou(line, torch.tensor([[0.5, 0.5, 0.5, 0.5]]))).all()
    with pytest.raises(ValueError, match="equal shapes"):
        elementwise_box_iou(torch.zeros(2, 4), torch.zeros(3, 4))


def test_giou_has_a_gradient_for_disjoint_boxes():
    # The reason GIoU is used as a loss: IoU is flat (0) for disjoint boxes, GIoU is not.
    pred = torch.tensor([[0.0, 0.0, 0.2, 0.2]], requires_grad=True)
    target = torch.tensor([[0.6, 0.6, 0.8, 0.8]])
    (1 - elementwise_generalized_box_iou(pred, target)).sum().backward()
    assert pred.grad.abs().sum() > 0
