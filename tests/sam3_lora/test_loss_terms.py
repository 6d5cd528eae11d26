"""Each term of the SAM3 criterion pinned to a value computed by hand, as SAM3's own
`loss_fns.py` defines it: presence = 0.5 x BCE, a find-query is positive only with a
w, h > 0 box, flagged masks are skipped, the sqrt(batch) scale, the points-mode order."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sam3_lora.losses import LossWeights, build_criterion, compute_num_boxes

LN2 = math.log(2)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def hand_case() -> tuple[dict, list[dict]]:
    """Two find-queries of Q = 2 queries, 4 x 4 masks; the first has one instance, the second none.

    Query 0 of find-query 0 is matched: box (0.55, 0.5, 0.2, 0.2) against (0.5, 0.5, 0.2, 0.2),
    L1 0.05, IoU = GIoU = 0.03 / 0.05 = 0.6; logit ln 3 (p = 3/4). Query 1: logit 0 (p = 1/2).
    Every mask logit is 0 (p = 1/2); the target mask holds 4 of the 16 pixels.
    """
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :2] = True
    outputs = {
        "pred_logits": torch.tensor([[math.log(3), 0.0], [1.0, -1.0]]),
        "pred_boxes": torch.tensor([[[0.55, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]],
                                    [[0.5, 0.5, 0.3, 0.3], [0.4, 0.4, 0.1, 0.1]]]),
        "presence_logits": torch.tensor([[2.0], [2.0]]),
        "pred_masks": torch.zeros(2, 2, 4, 4),
        "aux_outputs": [],
    }
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "masks": mask[None]},
               {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 4, 4, dtype=torch.bool)}]
    return outputs, targets


def test_every_term_has_its_hand_computed_value():
    outputs, targets = hand_case()
    result = build_criterion(mask_mode="full")(outputs, targets, compute_num_boxes(targets, "cpu"))
    soft_target = 0.75**0.25 * 0.6**0.75  # p^0.25 IoU^0.75 of the matched query
    expected = {
        "loss_bbox": 0.05 / 1,
        "loss_giou": (1 - 0.6) / 1,
        # matched: 10 * BCE(ln 3, t) = 10 (ln 4 - t ln 3); unmatched: p^2 BCE(0, 0) = ln 2 / 4;
        # the negative find-query adds nothing; mean over its 2 x 2 = 4 entries.
        "loss_ce": (10 * (math.log(4) - soft_target * math.log(3)) + LN2 / 4) / 4,
        # 0.5 x BCE, mean over the 2 find-queries: targets 1 and 0 at logit 2.
        "loss_presence": 0.5 * (softplus(-2) + softplus(2)) / 2,
        # focal at p = 1/2: a_t (1/2)^2 ln 2 with a_t = 0.25 on the 4 mask pixels, 0.75 on the 12 others.
        "loss_mask": 0.25 * LN2 * (0.25 * 4 + 0.75 * 12) / 16,
        "loss_dice": 1 - (2 * 0.5 * 4 + 1) / (0.5 * 16 + 4 + 1),
    }
    for name, value in expected.items():
        assert result[name].item() == pytest.approx(value, rel=1e-5), name
    weights = {"loss_bbox": 5, "loss_giou": 2, "loss_ce": 20, "loss_presence": 20, "loss_mask": 200, "loss_dice": 10}
    total = sum(weights[name] * value for name, value in expected.items())
    assert result["loss"].item() == pytest.approx(total, rel=1e-5)
    assert result["num_boxes"].item() == 1.0


def test_presence_is_half_the_bce_averaged_over_find_queries():
    generator = torch.Generator().manual_seed(0)
    presence = torch.randn(5, 1, generator=generator) * 4
    counts = [2, 0, 1, 0, 3]
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(count, 1)} for count in counts]
    outputs = {"pred_logits": torch.zeros(5, 3), "pred_boxes": torch.full((5, 3, 4), 0.4),
               "presence_logits": presence, "aux_outputs": []}
    criterion = build_criterion(LossWeights(mask=0.0, dice=0.0))  # no masks in this case
    result = criterion(outputs, targets, compute_num_boxes(targets, "cpu"))
    has_object = torch.tensor([[1.0], [0.0], [1.0], [0.0], [1.0]])
    bce = F.binary_cross_entropy_with_logits(presence, has_object)  # mean over the 5 find-queries
    assert result["loss_presence"].item() == pytest.approx(0.5 * bce.item(), rel=1e-6)


def test_only_a_box_with_positive_width_and_height_makes_a_find_query_positive():
    outputs, targets = hand_case()
    criterion = build_criterion(mask_mode="full")
    degenerate = [{"boxes": torch.tensor([[0.5, 0.5, 0.0, 0.2]]), "masks": targets[0]["masks"]}, targets[1]]
    empty = [{"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 4, 4, dtype=torch.bool)}, targets[1]]
    with_degenerate = criterion(outputs, degenerate, compute_num_boxes(degenerate, "cpu"))
    without = criterion(outputs, empty, compute_num_boxes(empty, "cpu"))
    # Presence target 0 and no classification loss, as for a find-query with no box at all...
    assert with_degenerate["loss_presence"].item() == pytest.approx(without["loss_presence"].item(), rel=1e-6)
    assert with_degenerate["loss_ce"].item() == without["loss_ce"].item() == 0.0
    assert with_degenerate["loss_presence"].item() == pytest.approx(0.5 * softplus(2), rel=1e-6)
    # ...while the box still counts in num_boxes and is matched (num_boxes is SAM3's plain count).
    assert with_degenerate["num_boxes"].item() == 1.0 and with_degenerate["loss_bbox"].item() > 0


def two_matched_instances(valid_masks: torch.Tensor | None, garbage: bool = False) -> tuple[dict, list[dict]]:
    """One find-query, Q = 3: query i sits exactly on instance i (i = 0, 1); masks 8 x 8."""
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 1:4, 1:4] = True
    masks[1] = torch.rand(8, 8, generator=torch.Generator().manual_seed(1)) > 0.5 if garbage else False
    masks[1, 5:7, 5:7] |= not garbage
    pred_masks = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    outputs = {"pred_logits": torch.tensor([[3.0, 3.0, -3.0]]),
               "pred_boxes": torch.cat([boxes, torch.tensor([[0.5, 0.5, 0.05, 0.05]])])[None],
               "presence_logits": torch.tensor([[1.0]]), "pred_masks": pred_masks, "aux_outputs": []}
    target = {"boxes": boxes, "masks": masks}
    if valid_masks is not None:
        target["valid_masks"] = valid_masks
    return outputs, [target]


def test_masks_flagged_invalid_are_skipped_but_their_boxes_still_count():
    criterion = build_criterion(mask_mode="full")
    flagged_outputs, flagged = two_matched_instances(torch.tensor([True, False]))
    result = criterion(flagged_outputs, flagged, compute_num_boxes(flagged, "cpu"))
    garbage_outputs, garbage = two_matched_instances(torch.tensor([True, False]), garbage=True)
    assert result["num_boxes"].item() == 2.0
    # Whatever the skipped mask holds, the mask terms do not change: only instance 0's mask is scored...
    same = criterion(garbage_outputs, garbage, compute_num_boxes(garbage, "cpu"))
    for name in ("loss_mask", "loss_dice"):
        assert same[name].item() == result[name].item(), name
    # ...and it is divided by num_boxes = 2 (both boxes), like SAM3's Masks loss.
    one_outputs, one = two_matched_instances(None)
    one[0] = {"boxes": one[0]["boxes"][:1], "masks": one[0]["masks"][:1]}
    alone = criterion(one_outputs, one, 2.0)
    for name in ("loss_mask", "loss_dice"):
        assert result[name].item() == pytest.approx(alone[name].item(), rel=1e-6), name
    # No valid mask at all: zero mask terms that still backpropagate.
    none_outputs, none_valid = two_matched_instances(torch.tensor([False, False]))
    nothing = criterion(none_outputs, none_valid, 2.0)
    assert nothing["loss_mask"].item() == nothing["loss_dice"].item() == 0.0
    nothing["loss"].backward()
    assert none_outputs["pred_masks"].grad is not None
    with pytest.raises(ValueError, match="'valid_masks' must be \\[T\\] bool with T = 2"):
        criterion(flagged_outputs, [{**flagged[0], "valid_masks": torch.tensor([True])}], 2.0)


def test_scale_by_find_batch_size_multiplies_the_total_by_the_root_of_the_batch():
    outputs, targets = hand_case()
    num_boxes = compute_num_boxes(targets, "cpu")
    plain = build_criterion(mask_mode="full")(outputs, targets, num_boxes)
    scaled_criterion = build_criterion(mask_mode="full", scale_by_find_batch_size=True)
    scaled = scaled_criterion(outputs, targets, num_boxes)
    assert scaled["loss"].item() == pytest.approx(math.sqrt(2) * plain["loss"].item(), rel=1e-6)
    assert scaled["loss_ce"].item() == plain["loss_ce"].item()  # terms unscaled, weighted ones scaled
    weighted = sum(value.item() for name, value in scaled.items() if name.startswith("weighted/"))
    assert weighted == pytest.approx(scaled["loss"].item(), rel=1e-6)
    # With accumulation the batch is the whole step's find-queries (here 8): the root of that.
    step = scaled_criterion(outputs, targets, num_boxes, num_find_queries=8.0)
    step_plain = build_criterion(mask_mode="full")(outputs, targets, num_boxes, num_find_queries=8.0)
    assert step["loss"].item() == pytest.approx(math.sqrt(8) * step_plain["loss"].item(), rel=1e-6)
    assert build_criterion(pos_weight=5.0).pos_weight == 5.0


def test_points_follow_the_target_order_whatever_the_query_order():
    """The matched rows are ordered by instance, so shuffling the queries leaves the draws on the same masks."""
    generator = torch.Generator().manual_seed(3)
    boxes = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.7, 0.3, 0.2, 0.3], [0.5, 0.75, 0.3, 0.2]])
    masks = torch.rand(3, 16, 16, generator=generator) > 0.5
    pred_boxes = torch.cat([boxes + 0.01, torch.tensor([[0.5, 0.5, 0.02, 0.02]] * 2)])
    outputs = {"pred_logits": torch.tensor([[2.0, 2.0, 2.0, -4.0, -4.0]]), "pred_boxes": pred_boxes[None],
               "presence_logits": torch.tensor([[1.0]]), "aux_outputs": [],
               "pred_masks": torch.randn(1, 5, 16, 16, generator=generator) * 3}
    targets = [{"boxes": boxes, "masks": masks}]
    criterion = build_criterion(num_points=64)
    shuffle = torch.tensor([4, 2, 0, 3, 1])  # instance 0 -> query 2, 1 -> 4, 2 -> 1
    shuffled = {name: (value[:, shuffle] if name != "presence_logits" and torch.is_tensor(value) else value)
                for name, value in outputs.items()}
    (query_idx, target_idx), = criterion.matcher(shuffled["pred_logits"], shuffled["pred_boxes"], [boxes])
    assert target_idx.tolist() == [0, 1, 2] and query_idx.tolist() == [2, 4, 1]
    torch.manual_seed(0)
    first = criterion(outputs, targets, 3.0)
    torch.manual_seed(0)
    second = criterion(shuffled, targets, 3.0)
    for name in ("loss_mask", "loss_dice"):
        assert second[name].item() == pytest.approx(first[name].item(), rel=1e-6), name
