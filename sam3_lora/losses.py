"""SAM3's set criterion, term by term as SAM3's own training code computes it.

One batch element is a find-query (image, noun phrase) with T_b >= 0 instances.
After Hungarian matching (sam3_lora.matcher), with M the matched (query, instance)
pairs of the batch, Q queries, p = sigmoid(logit), and the defaults of SAM3's
recipe in brackets (`sam3/train/loss/loss_fns.py`: Boxes, IABCEMdetr, Masks, as
its fine-tuning configs set them):

    loss_bbox     [5]   sum_M ||b - g||_1 (cxcywh, 4 coords)          / num_boxes
    loss_giou     [2]   sum_M (1 - GIoU(b, g))                        / num_boxes
    loss_ce       [20]  sum_{b,q} keep_b * l_bq                       / (num_find_queries * Q)
                        l = pos_weight [10] * BCE(logit, t), t = max(p^0.25 IoU^0.75, 0.01) (detached) if matched,
                        l = p^2 * BCE(logit, 0) otherwise
    loss_presence [20]  sum_b FL(presence_b, keep_b; a 0.5, g 0)       / num_find_queries
                        = 0.5 * mean_b BCE(presence_b, keep_b): SAM3's focal form, a_t = 0.5, (1 - p_t)^0 = 1
    loss_mask     [200] sum_{M, valid mask} mean_points FL(mask logit, mask; a 0.25, g 2) / num_boxes
    loss_dice     [10]  sum_{M, valid mask} 1 - (2 sum p t + 1) / (sum p + sum t + 1)  / num_boxes

FL(x, t; a, g) = a_t (1 - p_t)^g BCE(x, t), p_t = p t + (1 - p)(1 - t), a_t = a t + (1 - a)(1 - t).
keep_b = 1 when find-query b has a valid object, a box with w > 0 and h > 0 (SAM3's
"visible" instances), else 0: the presence target, and the mask that zeroes a
negative find-query's classification terms. A target may flag instances whose mask
is unusable (`valid_masks` [T] bool, False = skip): their mask terms are left out,
while their boxes still count in num_boxes, are matched and train the box terms.

Box, classification and presence terms are repeated on every earlier decoder layer
(`loss_bbox_0`, ... for layer 0, each with its own matching); masks only on the last.
total = sum of weight * term over all of them, times sqrt(num_find_queries) when
scale_by_find_batch_size is on (SAM3's option, off by default, on in its fine-tuning
configs such as roboflow_v100_full_ft_100_images.yaml: the total grows with the
square root of the per-GPU batch). SAM3 takes the batch of one forward pass; here it
is the find-queries of the whole optimiser step per GPU, the same without gradient
accumulation, so that accumulating k micro-batches still equals one batch.

num_boxes = (sum over ranks of the instances of the batch) / world_size, >= 1, and
num_find_queries likewise. Dividing by world_size is what makes DDP right: DDP
averages gradients over ranks, so each rank's sum / (global / world) averages to
global sum / global. With gradient accumulation, compute both over the whole
accumulated batch and sum the micro-batch losses: the sum of the k micro-batch
losses is then exactly the loss of the whole batch, and so is its gradient. The
public SAM3 LoRA scripts divided by a hard-coded 1, which gave losses of ~70,000.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
import torch
import torch.nn.functional as F

from sam3_lora.box_ops import box_cxcywh_to_xyxy, elementwise_box_iou, elementwise_generalized_box_iou
from sam3_lora.dist import all_reduce_sum, world_size
from sam3_lora.matcher import HungarianMatcher
from sam3_lora.point_sampling import point_sample, point_sample_binary, uncertain_point_coords

MASK_MODES = ("points", "full")
# Mask2Former / PointRend: 112 x 112 points per mask, 3x oversampling, 75 % importance.
DEFAULT_NUM_POINTS = 112 * 112


@dataclass(kw_only=True)
class LossWeights:
    """Weight of each loss term in the total (SAM3's defaults); aux layers use the same weights.

    The training config's `loss` section is this class plus the other loss keys, so a
    message names the weight by its config key (loss.<name>).
    """

    bbox: float = field(default=5.0, metadata={"help": "Weight of the L1 box loss (matched queries, / num_boxes)."})
    giou: float = field(default=2.0, metadata={"help": "Weight of the 1 - GIoU box loss (matched queries, / num_boxes)."})
    ce: float = field(default=20.0, metadata={"help": "Weight of the IoU-aware classification BCE (mean over all queries)."})
    presence: float = field(default=20.0, metadata={
        "help": "Weight of the presence loss, 0.5 x BCE of 'the phrase is in the image' (mean over find-queries)."})
    mask: float = field(default=200.0, metadata={"help": "Weight of the focal mask loss (last layer, / num_boxes)."})
    dice: float = field(default=10.0, metadata={"help": "Weight of the dice mask loss (last layer, / num_boxes)."})

    def __post_init__(self) -> None:
        for item in fields(LossWeights):
            value = getattr(self, item.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < float("inf"):
                raise ValueError(f"loss.{item.name}: must be a finite number >= 0, got {value!r}")
        if all(getattr(self, item.name) == 0 for item in fields(LossWeights)):
            raise ValueError("loss: all loss weights are 0: nothing would be trained; keep at least one term > 0")

    def by_term(self) -> dict[str, float]:
        """{"loss_bbox": 5.0, ...}: weight per unweighted term name (without the aux layer suffix)."""
        return {f"loss_{item.name}": float(getattr(self, item.name)) for item in fields(LossWeights)}


def _count_over_ranks(count: int, device: torch.device | str) -> torch.Tensor:
    """(sum of `count` over ranks) / world_size, clamped to >= 1, as a float32 scalar on `device`."""
    total = all_reduce_sum(torch.tensor(float(count), device=device))
    return (total / world_size()).clamp(min=1.0)


def compute_num_boxes(targets: list[dict], device: torch.device | str) -> torch.Tensor:
    """Ground-truth instances of the batch, summed over ranks / world_size, >= 1 (float scalar).

    targets: B dicts with "boxes" [T_i,4]. Pass the targets of all micro-batches of
    an accumulation step to normalise each micro-batch by the whole batch. Every
    rank must call it (it all-reduces).
    """
    return _count_over_ranks(sum(len(target["boxes"]) for target in targets), device)


def compute_num_find_queries(targets: list[dict], device: torch.device | str) -> torch.Tensor:
    """Find-queries of the batch, summed over ranks / world_size, >= 1 (float scalar); see compute_num_boxes."""
    return _count_over_ranks(len(targets), device)


def sigmoid_focal(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Focal loss (Lin et al. 2017), mean over the last dim: logits, targets [N,P] -> [N].

    FL = a_t (1 - p_t)^g BCE(logit, t), p_t = p t + (1 - p)(1 - t), a_t = a t + (1 - a)(1 - t).
    Masks use a 0.25, g 2; presence a 0.5, g 0, which is 0.5 x BCE.
    """
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    prob_true = prob * targets + (1 - prob) * (1 - targets)
    alpha_true = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_true * (1 - prob_true) ** gamma * bce).mean(dim=-1)


def dice_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss 1 - (2 sum p t + 1) / (sum p + sum t + 1), p = sigmoid(logit): [N,P] -> [N]."""
    prob = logits.sigmoid()
    return 1 - (2 * (prob * targets).sum(dim=1) + 1) / (prob.sum(dim=1) + targets.sum(dim=1) + 1)


def _matched_positions(matches: list[tuple[torch.Tensor, torch.Tensor]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Matches -> (find-query index [N], query index [N]) of all matched pairs, on `device`."""
    batch_idx = torch.cat([torch.full_like(query_idx, index) for index, (query_idx, _) in enumerate(matches)])
    query_idx = torch.cat([query_idx for query_idx, _ in matches])
    return batch_idx.to(device), query_idx.to(device)


def _matched_targets(targets: list[dict], matches: list, key: str, device) -> torch.Tensor:
    """targets[b][key][target_idx] of every matched pair, concatenated in match order: [N,...]."""
    return torch.cat([target[key][target_idx.to(target[key].device)] for target, (_, target_idx) in zip(targets, matches)]).to(device)


def _has_valid_object(targets: list[dict], device) -> torch.Tensor:
    """[B] float keep_b: 1 where the find-query has a box with w > 0 and h > 0 (the presence target)."""
    if not targets:
        return torch.zeros(0, device=device)
    valid = [((target["boxes"][:, 2] > 0) & (target["boxes"][:, 3] > 0)).any().to(device) for target in targets]
    return torch.stack(valid).float()


def _matched_valid_masks(targets: list[dict], matches: list, device) -> torch.Tensor:
    """[N] bool: target["valid_masks"][target_idx] of every matched pair (all True where not given)."""
    flags = []
    for target, (_, target_idx) in zip(targets, matches):
        valid = target.get("valid_masks")
        if valid is None:
            flags.append(torch.ones(len(target_idx), dtype=torch.bool, device=device))
        else:
            flags.append(valid.to(device).bool()[target_idx.to(device)])
    return torch.cat(flags)


class SetCriterion:
    """Matches predictions to instances and returns every loss term, weighted and not (module docstring)."""

    def __init__(
        self,
        matcher: HungarianMatcher,
        weights: dict[str, float],
        mask_mode: str = "points",
        num_points: int = DEFAULT_NUM_POINTS,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        pos_weight: float = 10.0,
        iou_aware_alpha: float = 0.25,
        negative_gamma: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        presence_alpha: float = 0.5,
        presence_gamma: float = 0.0,
        scale_by_find_batch_size: bool = False,
        aux_loss: bool = True,
    ) -> None:
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        if num_points < 1 or oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
            raise ValueError(
                f"point sampling needs num_points >= 1, oversample_ratio >= 1 and importance_sample_ratio in [0, 1], "
                f"got {num_points}, {oversample_ratio}, {importance_sample_ratio}"
            )
        self.matcher = matcher
        self.weights = dict(weights)
        self.mask_mode = mask_mode
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.pos_weight = pos_weight
        self.iou_aware_alpha = iou_aware_alpha
        self.negative_gamma = negative_gamma
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.presence_alpha = presence_alpha
        self.presence_gamma = presence_gamma
        self.scale_by_find_batch_size = scale_by_find_batch_size
        self.aux_loss = aux_loss

    def loss_boxes(self, outputs: dict, targets: list[dict], matches: list, num_boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        """pred_boxes [B,Q,4] cxcywh -> {"loss_bbox": sum_M L1 / num_boxes, "loss_giou": sum_M (1 - GIoU) / num_boxes}."""
        pred_boxes = outputs["pred_boxes"].float()
        batch_idx, query_idx = _matched_positions(matches, pred_boxes.device)
        matched_pred = pred_boxes[batch_idx, query_idx]
        matched_target = _matched_targets(targets, matches, "boxes", pred_boxes.device).float()
        l1 = F.l1_loss(matched_pred, matched_target, reduction="none").sum()
        giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(matched_pred), box_cxcywh_to_xyxy(matched_target))
        return {"loss_bbox": l1 / num_boxes, "loss_giou": (1 - giou).sum() / num_boxes}

    def loss_classification(
        self, outputs: dict, targets: list[dict], matches: list, num_find_queries: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """IoU-aware BCE on pred_logits [B,Q] -> {"loss_ce": sum / (num_find_queries * Q)}."""
        logits = outputs["pred_logits"].float()
        prob = logits.sigmoid()
        batch_idx, query_idx = _matched_positions(matches, logits.device)
        is_matched = torch.zeros_like(logits, dtype=torch.bool)
        is_matched[batch_idx, query_idx] = True
        with torch.no_grad():
            matched_boxes = box_cxcywh_to_xyxy(outputs["pred_boxes"][batch_idx, query_idx].float())
            target_boxes = box_cxcywh_to_xyxy(_matched_targets(targets, matches, "boxes", logits.device).float())
            iou, _ = elementwise_box_iou(matched_boxes, target_boxes)
            soft_target = prob[batch_idx, query_idx] ** self.iou_aware_alpha * iou ** (1 - self.iou_aware_alpha)
            class_target = torch.zeros_like(logits)
            class_target[batch_idx, query_idx] = soft_target.clamp(min=0.01)
        bce = F.binary_cross_entropy_with_logits(logits, class_target, reduction="none")
        # Not detached on purpose: p^2 is a focal modulating factor (SAM3 and focal loss keep its gradient).
        per_query = torch.where(is_matched, self.pos_weight * bce, prob**self.negative_gamma * bce)
        # A negative find-query has no instance to classify; the presence term teaches "absent".
        keep = _has_valid_object(targets, logits.device)[:, None]
        return {"loss_ce": (per_query * keep).sum() / (num_find_queries * logits.shape[1])}

    def loss_presence(self, outputs: dict, targets: list[dict], num_find_queries: torch.Tensor) -> dict[str, torch.Tensor]:
        """presence_logits [B,1] -> {"loss_presence": sum_b FL(presence_b, keep_b; 0.5, 0) / num_find_queries}."""
        presence = outputs["presence_logits"].reshape(-1, 1).float()
        keep = _has_valid_object(targets, presence.device)[:, None]
        focal = sigmoid_focal(presence, keep, self.presence_alpha, self.presence_gamma)
        return {"loss_presence": focal.sum() / num_find_queries}

    def loss_masks(self, outputs: dict, targets: list[dict], matches: list, num_boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        """pred_masks [B,Q,h,w] logits, target masks [T_i,S,S] ->
        {"loss_mask": sum_M focal / num_boxes, "loss_dice": sum_M dice / num_boxes}, at sampled points or full S x S,
        over the matched pairs whose mask is valid, in match order (so the point draws follow the target order).
        """
        pred_masks = outputs["pred_masks"]
        batch_idx, query_idx = _matched_positions(matches, pred_masks.device)
        valid = _matched_valid_masks(targets, matches, pred_masks.device)
        matched_logits = pred_masks[batch_idx[valid], query_idx[valid]].float()  # [N,h,w]
        if matched_logits.shape[0] == 0:
            # Sum of an empty selection: 0, but still in the graph, so every rank under
            # DDP produces (zero) gradients for the mask decoder.
            zero = matched_logits.sum()
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        matched_masks = _matched_targets(targets, matches, "masks", pred_masks.device)[valid]  # [N,S,S] bool
        if self.mask_mode == "points":
            coords = uncertain_point_coords(matched_logits, self.num_points, self.oversample_ratio, self.importance_sample_ratio)
            logits = point_sample(matched_logits, coords)
            labels = point_sample_binary(matched_masks.bool(), coords)
        else:
            logits = F.interpolate(matched_logits[:, None], size=matched_masks.shape[-2:], mode="bilinear", align_corners=False)
            logits = logits.flatten(1)
            labels = matched_masks.flatten(1).float()
        focal = sigmoid_focal(logits, labels, self.focal_alpha, self.focal_gamma)
        dice = dice_per_mask(logits, labels)
        return {"loss_mask": focal.sum() / num_boxes, "loss_dice": dice.sum() / num_boxes}

    def _wants_masks(self) -> bool:
        return self.weights.get("loss_mask", 0.0) > 0 or self.weights.get("loss_dice", 0.0) > 0

    def _layer_losses(self, outputs: dict, targets: list[dict], num_boxes, num_find_queries) -> tuple[dict, list]:
        """(box, classification and presence terms, matches) of one decoder layer, matched on its own."""
        target_boxes = [target["boxes"] for target in targets]
        matches = self.matcher(outputs["pred_logits"], outputs["pred_boxes"], target_boxes)
        return {
            **self.loss_boxes(outputs, targets, matches, num_boxes),
            **self.loss_classification(outputs, targets, matches, num_find_queries),
            **self.loss_presence(outputs, targets, num_find_queries),
        }, matches

    def __call__(
        self,
        outputs: dict,
        targets: list[dict],
        num_boxes: torch.Tensor | float,
        num_find_queries: torch.Tensor | float | None = None,
    ) -> dict[str, torch.Tensor]:
        """outputs from `forward_with_layer_outputs`, targets B dicts {"boxes" [T,4] cxcywh, "masks" [T,S,S] bool} ->
        {"loss_bbox", ..., "loss_bbox_0", ... (unweighted, detached), "weighted/<name>" (detached),
         "loss" (total, with gradient), "num_boxes"}. Targets may add "valid_masks" [T] bool.
        weighted/<name> = weight * term * scale, so they sum to "loss"; scale = sqrt(num_find_queries)
        with scale_by_find_batch_size, else 1.

        num_boxes: from `compute_num_boxes` (over the whole accumulated batch when accumulating).
        num_find_queries: from `compute_num_find_queries`; None means len(targets), which is
        right without accumulation.
        """
        _check_targets(outputs, targets, self._wants_masks())
        device = outputs["pred_logits"].device
        num_boxes = _positive_scalar("num_boxes", num_boxes, device)
        num_find_queries = _positive_scalar(
            "num_find_queries", len(targets) if num_find_queries is None else num_find_queries, device
        )

        terms, matches = self._layer_losses(outputs, targets, num_boxes, num_find_queries)
        if self._wants_masks():
            terms.update(self.loss_masks(outputs, targets, matches, num_boxes))
        if self.aux_loss:
            for layer, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
                aux_terms, _ = self._layer_losses(aux_outputs, targets, num_boxes, num_find_queries)
                terms.update({f"{name}_{layer}": value for name, value in aux_terms.items()})

        scale = num_find_queries.sqrt() if self.scale_by_find_batch_size else 1.0
        result: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=device)
        for name, value in terms.items():
            base_name = name if name in self.weights else name.rsplit("_", 1)[0]
            weighted = value * (self.weights.get(base_name, 0.0) * scale)
            total = total + weighted
            result[name] = value.detach()
            result[f"weighted/{name}"] = weighted.detach()
        result["loss"] = total
        result["num_boxes"] = num_boxes
        return result


def _positive_scalar(name: str, value, device) -> torch.Tensor:
    """A normaliser as a float32 scalar tensor on `device`; raises unless finite and > 0."""
    tensor = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(())
    number = float(tensor)
    if not (number > 0 and number != float("inf")):
        raise ValueError(f"{name} must be a finite number > 0, got {number}; use compute_{name}(targets, device)")
    return tensor


def _check_targets(outputs: dict, targets: list[dict], need_masks: bool) -> None:
    """Raise ValueError naming the find-query whose target does not fit the outputs."""
    batch_size = outputs["pred_logits"].shape[0]
    if len(targets) != batch_size:
        raise ValueError(f"outputs hold {batch_size} find-queries but {len(targets)} targets were given")
    for index, target in enumerate(targets):
        name = f"target {index} (phrase {target.get('phrase', '?')!r}, image {target.get('image_id', '?')})"
        boxes = target.get("boxes")
        if boxes is None or boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{name}: 'boxes' must be [T,4] cxcywh, got {None if boxes is None else list(boxes.shape)}")
        if need_masks:
            masks = target.get("masks")
            if masks is None or masks.ndim != 3 or masks.shape[0] != boxes.shape[0]:
                shape = None if masks is None else list(masks.shape)
                raise ValueError(f"{name}: 'masks' must be [T,S,S] with T = {boxes.shape[0]} boxes, got {shape}")
        valid_masks = target.get("valid_masks")
        if valid_masks is not None and tuple(valid_masks.shape) != (boxes.shape[0],):
            raise ValueError(f"{name}: 'valid_masks' must be [T] bool with T = {boxes.shape[0]} boxes, "
                             f"got {list(valid_masks.shape)}")


def build_criterion(
    weights: LossWeights | None = None,
    mask_mode: str = "points",
    num_points: int | None = None,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    pos_weight: float = 10.0,
    scale_by_find_batch_size: bool = False,
    aux_loss: bool = True,
    matcher_cost_bbox: float = 5.0,
    matcher_cost_class: float = 2.0,
    matcher_cost_giou: float = 2.0,
) -> SetCriterion:
    """The SAM3 criterion from plain config values (SAM3's recipe when left out; num_points None = 112*112)."""
    weights = weights or LossWeights()
    num_points = DEFAULT_NUM_POINTS if num_points is None else num_points
    matcher = HungarianMatcher(cost_bbox=matcher_cost_bbox, cost_class=matcher_cost_class, cost_giou=matcher_cost_giou)
    return SetCriterion(
        matcher,
        weights.by_term(),
        mask_mode=mask_mode,
        num_points=num_points,
        oversample_ratio=oversample_ratio,
        importance_sample_ratio=importance_sample_ratio,
        pos_weight=pos_weight,
        scale_by_find_batch_size=scale_by_find_batch_size,
        aux_loss=aux_loss,
    )
