"""Hungarian matcher: optimal against brute force, shapes for Q < T, Q > T, T = 0."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from sam3_lora.box_ops import box_cxcywh_to_xyxy, pairwise_generalized_box_iou
from sam3_lora.matcher import HungarianMatcher, focal_matching_cost, matching_cost


def random_cxcywh(count: int, generator: torch.Generator) -> torch.Tensor:
    centres = torch.rand(count, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(count, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centres, sizes], dim=1)


def brute_force_minimum(cost: torch.Tensor) -> float:
    """Lowest total cost over every one-to-one assignment of min(Q, T) pairs."""
    num_queries, num_targets = cost.shape
    if num_queries >= num_targets:
        return min(
            sum(cost[query, target].item() for target, query in enumerate(queries))
            for queries in itertools.permutations(range(num_queries), num_targets)
        )
    return min(
        sum(cost[query, target].item() for query, target in enumerate(targets))
        for targets in itertools.permutations(range(num_targets), num_queries)
    )


@pytest.mark.parametrize("num_queries,num_targets", [(5, 3), (3, 5), (4, 4), (6, 1), (1, 4), (2, 0)])
def test_matcher_finds_the_brute_force_optimum(num_queries, num_targets):
    generator = torch.Generator().manual_seed(num_queries * 10 + num_targets)
    matcher = HungarianMatcher()
    for _ in range(5):
        logits = torch.randn(2, num_queries, generator=generator) * 3
        boxes = torch.stack([random_cxcywh(num_queries, generator) for _ in range(2)])
        targets = [random_cxcywh(num_targets, generator), random_cxcywh(num_targets, generator)]
        matches = matcher(logits, boxes, targets)
        for index, (query_idx, target_idx) in enumerate(matches):
            assert query_idx.dtype == torch.int64 and target_idx.dtype == torch.int64
            assert len(query_idx) == len(target_idx) == min(num_queries, num_targets)
            assert len(set(query_idx.tolist())) == len(query_idx) and len(set(target_idx.tolist())) == len(target_idx)
            if num_targets == 0:
                continue
            cost = matching_cost(logits[index], boxes[index], targets[index])
            assert cost[query_idx, target_idx].sum().item() == pytest.approx(brute_force_minimum(cost), abs=1e-4)


def test_cost_is_the_documented_formula():
    logits = torch.tensor([0.3, -1.0])
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.4]])
    target = torch.tensor([[0.45, 0.5, 0.3, 0.2]])
    prob = logits.sigmoid()
    focal = -0.25 * (1 - prob) ** 2 * prob.log() + 0.75 * prob**2 * (1 - prob).log()
    l1 = (pred - target).abs().sum(dim=1)
    giou = pairwise_generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))[:, 0]
    expected = 5 * l1 + 2 * focal - 2 * giou
    assert torch.allclose(matching_cost(logits, pred, target)[:, 0], expected, atol=1e-6)
    assert torch.allclose(focal_matching_cost(logits), focal, atol=1e-6)


def test_confident_query_wins_between_identical_boxes():
    box = torch.tensor([0.5, 0.5, 0.2, 0.2])
    logits = torch.tensor([[-3.0, 4.0, 0.0]])
    boxes = box.expand(1, 3, 4).clone()
    (query_idx, target_idx), = HungarianMatcher()(logits, boxes, [box[None]])
    assert query_idx.tolist() == [1] and target_idx.tolist() == [0]


def test_negative_find_query_matches_nothing_and_bad_input_is_named():
    matcher = HungarianMatcher()
    logits, boxes = torch.zeros(2, 3), torch.full((2, 3, 4), 0.3)
    matches = matcher(logits, boxes, [torch.zeros(0, 4), torch.tensor([[0.3, 0.3, 0.1, 0.1]])])
    assert matches[0][0].numel() == 0 and matches[0][1].numel() == 0
    assert matches[1][1].tolist() == [0]
    boxes[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="find-query 1"):
        matcher(logits, boxes, [torch.zeros(0, 4), torch.tensor([[0.3, 0.3, 0.1, 0.1]])])
    with pytest.raises(ValueError, match="find-query 0 .*\\[3\\]"):
        matcher(logits, boxes, [torch.zeros(3), torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="not all 0"):
        HungarianMatcher(cost_bbox=0, cost_class=0, cost_giou=0)


def test_class_cost_is_exact_for_saturated_logits():
    # Far from 0 the cost is linear in the logit x: at x >> 0, p^2 ~ 1 and log(1 - p) ~ -x, so the
    # cost is (1 - a)(-x) = -0.75 x; at x << 0, (1 - p)^2 ~ 1 and log p ~ x, so it is -a x = -0.25 x.
    # log(p + 1e-8) in float32 gave -13.8 instead of -22.5 at x = 30, and is off by ~8e-3 at SAM3's clamp of 12.
    logits = torch.tensor([30.0, -30.0, 12.0, -12.0, 0.0])
    exact = []
    for x in logits.double().tolist():
        p = 1 / (1 + math.exp(-x))
        log_p, log_one_minus_p = -math.log1p(math.exp(-x)), -x - math.log1p(math.exp(-x))
        exact.append(-0.25 * (1 - p) ** 2 * log_p + 0.75 * p**2 * log_one_minus_p)
    cost = focal_matching_cost(logits)
    assert cost[0].item() == pytest.approx(-22.5, abs=1e-5) and cost[1].item() == pytest.approx(7.5, abs=1e-5)
    assert torch.allclose(cost.double(), torch.tensor(exact, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    assert torch.isfinite(focal_matching_cost(torch.tensor([100.0, -100.0]))).all()


def test_pairs_are_ordered_by_target_unless_a_find_query_has_more_targets_than_queries():
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])
    # Query 0 sits on target 1 and query 1 on target 0.
    logits, pred = torch.zeros(1, 2), boxes.flip(0)[None]
    (query_idx, target_idx), = HungarianMatcher()(logits, pred, [boxes])
    assert (query_idx.tolist(), target_idx.tolist()) == ([1, 0], [0, 1])
    # SAM3 keeps the solver's (query) order for the whole batch once one find-query has T > Q.
    crowded = torch.tensor([[0.5, 0.5, 0.1, 0.1]]).repeat(3, 1)
    matches = HungarianMatcher()(logits.repeat(2, 1), pred.repeat(2, 1, 1), [boxes, crowded])
    assert (matches[0][0].tolist(), matches[0][1].tolist()) == ([0, 1], [1, 0])
    assert matches[1][0].tolist() == [0, 1]
