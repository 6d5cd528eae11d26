"""Greedy box and mask NMS on hand-made cases."""
from __future__ import annotations

import pytest
import torch

from sam3_lora.nms import box_iou_matrix, box_nms, greedy_nms, mask_iou_matrix, mask_nms


def test_box_iou_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [3.0, 3.0, 3.0, 8.0]])
    iou = box_iou_matrix(boxes, boxes)
    assert iou[0, 1].item() == pytest.approx(50 / 150)  # overlap 5x10, union 100 + 100 - 50
    assert iou[0, 2].item() == 0.0
    assert iou[0, 0].item() == pytest.approx(1.0)
    assert iou[3, 3].item() == 0.0  # zero-area box: zero union, IoU 0 (not NaN)


def test_box_nms_suppresses_overlaps_above_the_threshold_in_score_order():
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],    # 0: score 0.5
        [1.0, 0.0, 11.0, 10.0],    # 1: score 0.9, IoU with 0 = 90/110 = 0.818
        [5.0, 0.0, 15.0, 10.0],    # 2: score 0.7, IoU with 1 = 60/140 = 0.43, with 0 = 0.33
        [50.0, 50.0, 60.0, 60.0],  # 3: score 0.1, disjoint
    ])
    scores = torch.tensor([0.5, 0.9, 0.7, 0.1])
    assert box_nms(boxes, scores, 0.5).tolist() == [1, 2, 3]
    assert box_nms(boxes, scores, 0.4).tolist() == [1, 3]     # 0.43 > 0.4: 2 goes too
    assert box_nms(boxes, scores, 0.9).tolist() == [1, 2, 0, 3]  # nothing above 0.9: all kept, by score


def test_suppressed_boxes_do_not_suppress_others():
    # A (0.9) suppresses B (0.8); B would have suppressed C (0.7), but B is gone, and A and C do not overlap enough
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [4.0, 0.0, 14.0, 10.0], [8.0, 0.0, 18.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoU(A,B) = 60/140 = 0.43, IoU(B,C) = 0.43, IoU(A,C) = 20/180 = 0.11
    assert box_nms(boxes, scores, 0.4).tolist() == [0, 2]


def test_ties_keep_input_order():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    assert box_nms(boxes, torch.tensor([0.5, 0.5]), 0.5).tolist() == [0]


def test_mask_iou_and_mask_nms_by_hand():
    masks = torch.zeros(4, 4, 4, dtype=torch.bool)
    masks[0, :2, :] = True      # top half, 8 px
    masks[1, :3, :] = True      # top three rows, 12 px: IoU with 0 = 8/12
    masks[2, 2:, :] = True      # bottom half: IoU with 1 = 4/16, with 0 = 0
    # masks[3] empty
    iou = mask_iou_matrix(masks, masks)
    assert iou[0, 1].item() == pytest.approx(8 / 12)
    assert iou[1, 2].item() == pytest.approx(4 / 16)
    assert iou[0, 2].item() == 0.0
    assert iou[3, 3].item() == 0.0
    scores = torch.tensor([0.6, 0.8, 0.7, 0.9])
    assert mask_nms(masks, scores, 0.5).tolist() == [3, 1, 2]   # 0 overlaps 1 by 0.67
    assert mask_nms(masks, scores, 0.2).tolist() == [3, 1]      # 2 overlaps 1 by 0.25
    assert mask_nms(masks, scores, 0.7).tolist() == [3, 1, 2, 0]


def test_empty_input_and_shape_errors():
    assert box_nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    assert mask_nms(torch.zeros(0, 3, 3, dtype=torch.bool), torch.zeros(0), 0.5).tolist() == []
    with pytest.raises(ValueError, match=r"\[N,4\]"):
        box_nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match=r"\[N,H,W\]"):
        mask_nms(torch.zeros(3, 3), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"\[N,N\]"):
        greedy_nms(torch.zeros(2, 3), torch.zeros(2), 0.5)
