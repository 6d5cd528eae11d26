"""Hungarian matching of SAM3's queries to the instances of each find-query.

For one find-query (image, noun phrase) with Q predictions and T ground-truth boxes:

    C[q, t] = w_bbox * ||b_q - g_t||_1 + w_class * focal_cost(p_q) - w_giou * GIoU(b_q, g_t)
    focal_cost(p) = -a (1 - p)^g log(p) + (1 - a) p^g log(1 - p),   p = sigmoid(logit)

with boxes in cxcywh (L1) and xyxy (GIoU), a = 0.25, g = 2, weights 5 / 2 / 2 as
in SAM3's recipe (its `BinaryHungarianMatcherV2` with focal: true). log p and
log(1 - p) are logsigmoid(logit) and logsigmoid(-logit), exact however saturated the
logit (log(p + eps) in float32 is off by up to 8e-3 at SAM3's clamp of 12 and
stops at log(eps) beyond it). Every ground truth is of the query's own phrase, so
the class cost depends on q only: it ranks queries by confidence, the box terms
pick which box. `scipy.optimize.linear_sum_assignment` returns the min-cost
assignment of min(Q, T) pairs; a find-query with T = 0 matches nothing.

Order of the pairs, as SAM3's matcher returns them: by target index when every
find-query of the batch has T <= Q (each instance matched, in instance order), by
query index otherwise (SAM3 then keeps the solver's order for the whole batch).
The order decides which mask gets which random points in the points-mode mask
loss, so a seed draws the same points as SAM3's code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from sam3_lora.box_ops import box_cxcywh_to_xyxy, pairwise_generalized_box_iou


def focal_matching_cost(pred_logits: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """[Q] logits -> [Q] cost = -a (1-p)^g log p + (1-a) p^g log(1-p); low for confident queries.

    log p = logsigmoid(logit), log(1 - p) = logsigmoid(-logit): finite and exact at any logit.
    """
    prob = pred_logits.sigmoid()
    log_prob, log_one_minus_prob = F.logsigmoid(pred_logits), F.logsigmoid(-pred_logits)
    return -alpha * (1 - prob) ** gamma * log_prob + (1 - alpha) * prob**gamma * log_one_minus_prob


def matching_cost(
    pred_logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    target_boxes: torch.Tensor,
    cost_bbox: float = 5.0,
    cost_class: float = 2.0,
    cost_giou: float = 2.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> torch.Tensor:
    """Cost matrix of one find-query.

    pred_logits [Q], pred_boxes [Q,4] cxcywh, target_boxes [T,4] cxcywh -> C [Q,T]
    = cost_bbox * L1 + cost_class * focal_cost - cost_giou * GIoU.
    """
    l1 = torch.cdist(pred_boxes.float(), target_boxes.float(), p=1)
    giou = pairwise_generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes.float()), box_cxcywh_to_xyxy(target_boxes.float()))
    class_cost = focal_matching_cost(pred_logits.float(), focal_alpha, focal_gamma)[:, None]
    return cost_bbox * l1 + cost_class * class_cost - cost_giou * giou


class HungarianMatcher:
    """Min-cost one-to-one assignment per find-query (see the module docstring for C)."""

    def __init__(
        self,
        cost_bbox: float = 5.0,
        cost_class: float = 2.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        if min(cost_bbox, cost_class, cost_giou) < 0 or cost_bbox + cost_class + cost_giou == 0:
            raise ValueError(
                f"matcher costs must be >= 0 and not all 0, got bbox={cost_bbox}, class={cost_class}, giou={cost_giou}"
            )
        self.cost_bbox = cost_bbox
        self.cost_class = cost_class
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def __call__(
        self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor, target_boxes: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """pred_logits [B,Q], pred_boxes [B,Q,4] cxcywh, target_boxes B x [T_i,4] cxcywh ->
        B x (query_idx [K_i] int64, target_idx [K_i] int64) on CPU, K_i = min(Q, T_i),
        sorted by target_idx when every T_i <= Q, else by query_idx (module docstring).
        """
        batch_size, num_queries = pred_logits.shape
        if len(target_boxes) != batch_size:
            raise ValueError(f"{batch_size} find-queries of predictions but {len(target_boxes)} targets")
        costs = []
        for index, boxes in enumerate(target_boxes):
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"target boxes of find-query {index} must be [T,4] cxcywh, got {list(boxes.shape)}")
            cost = matching_cost(
                pred_logits[index], pred_boxes[index], boxes.to(pred_boxes.device),
                self.cost_bbox, self.cost_class, self.cost_giou, self.focal_alpha, self.focal_gamma,
            )
            costs.append(cost.flatten())
        # One device-to-host copy for the whole batch instead of one per find-query.
        flat_costs = torch.cat(costs).cpu() if costs else torch.zeros(0)
        by_target = all(len(boxes) <= num_queries for boxes in target_boxes)
        matches = []
        for index, cost in enumerate(flat_costs.split([num_queries * len(boxes) for boxes in target_boxes])):
            num_targets = len(target_boxes[index])
            if num_targets == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                matches.append((empty, empty.clone()))
                continue
            cost = cost.view(num_queries, num_targets)
            if not torch.isfinite(cost).all():
                raise ValueError(f"matching cost of find-query {index} is not finite: predictions or target boxes hold NaN/inf")
            query_idx, target_idx = linear_sum_assignment(cost.numpy())  # sorted by query_idx
            if by_target:
                order = target_idx.argsort()
                query_idx, target_idx = query_idx[order], target_idx[order]
            matches.append((torch.as_tensor(query_idx, dtype=torch.int64), torch.as_tensor(target_idx, dtype=torch.int64)))
        return matches
