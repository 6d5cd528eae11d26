"""One optimiser step: `train_step(model, criterion, optimizer, scaler, micro_batches, ...)`.

Every micro-batch loss is divided by the num_boxes / find-query count of the whole
step (all micro-batches, all ranks), so summing their gradients is the gradient of
the whole batch. A micro-batch is the image-group batch of sam3_lora.image_groups:
pixel_values [N,3,S,S] with image_index [B], one backbone pass per image when the
model is a GroupedSam3 (or a plain find-query batch without image_index).
A non-finite prediction or loss raises NonFiniteLossError naming the step and term.
"""
from __future__ import annotations

import contextlib
import math

import torch

from sam3_lora import dist
from sam3_lora.layer_outputs import forward_with_layer_outputs
from sam3_lora.losses import compute_num_boxes, compute_num_find_queries


class NonFiniteLossError(RuntimeError):
    """A loss term (or a model output the loss needs) became NaN or infinite; names the step and the term."""

    def __init__(self, step: int, term: str, value: float, kind: str = "loss term") -> None:
        super().__init__(f"{kind} {term!r} is {value} at step {step}; lower optim.lr, check the data "
                         "(degenerate boxes, empty masks) or use precision fp32")
        self.step, self.term = step, term



def train_step(model, criterion, optimizer, scaler, micro_batches: list[dict], device: torch.device,
               dtype: torch.dtype, grad_clip: float, step: int) -> dict[str, float]:
    """One optimiser step over `micro_batches`; returns the step's loss terms (sums over micro-batches).

    Every micro-batch loss is divided by the num_boxes / find-query count of the
    whole step, so summing their gradients is the gradient of the whole batch; the
    returned terms are those of the whole batch too (mean over ranks).
    """
    all_targets = [t for batch in micro_batches for t in batch["targets"]]
    num_boxes = compute_num_boxes(all_targets, device)
    num_find_queries = compute_num_find_queries(all_targets, device)
    optimizer.zero_grad(set_to_none=True)
    logged: dict[str, float] = {}
    for index, batch in enumerate(micro_batches):
        targets = [_target_to(t, device) for t in batch["targets"]]
        last = index == len(micro_batches) - 1
        sync = model.no_sync() if hasattr(model, "no_sync") and not last else contextlib.nullcontext()
        with sync:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                outputs = forward_with_layer_outputs(model, *batch_inputs(batch, device))
            _check_finite_outputs(outputs, step)
            losses = criterion(outputs, targets, num_boxes, num_find_queries)
            _check_finite(losses, step)
            scaler.scale(losses["loss"]).backward()
        for name, value in losses.items():
            if name != "num_boxes":
                logged[name] = logged.get(name, 0.0) + float(value.detach())
    scaler.unscale_(optimizer)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip if grad_clip > 0 else math.inf)
    scaler.step(optimizer)
    scaler.update()
    # Each rank's terms cover its own find-queries over the global num_boxes / world, so the
    # whole batch's term is their mean over ranks (rank 0's alone is a noisy part of it).
    names = sorted(logged)
    averaged = dist.all_reduce_mean(torch.tensor([logged[name] for name in names], dtype=torch.float64, device=device))
    return {**dict(zip(names, averaged.tolist())), "num_boxes": float(num_boxes), "grad_norm": float(grad_norm)}


def _check_finite_outputs(outputs: dict, step: int) -> None:
    """Name a non-finite prediction before the matcher sees it (scipy refuses NaN costs with a ValueError)."""
    layers = [("", outputs)] + [(f"_{layer}", aux) for layer, aux in enumerate(outputs["aux_outputs"])]
    tensors = {f"{name}{suffix}": layer_outputs[name] for suffix, layer_outputs in layers
               for name in ("pred_logits", "pred_boxes", "presence_logits", "pred_masks") if name in layer_outputs}
    if bool(torch.stack([torch.isfinite(t).all() for t in tensors.values()]).all()):
        return  # one host sync per micro-batch; the details only on failure
    for name, tensor in tensors.items():
        bad = ~torch.isfinite(tensor)
        if bad.any():
            raise NonFiniteLossError(step, name, float(tensor.detach()[bad][0]), kind="model output")


def _check_finite(losses: dict[str, torch.Tensor], step: int) -> None:
    if torch.isfinite(losses["loss"]):
        return
    for name, value in losses.items():
        if not name.startswith("weighted/") and name != "loss" and not torch.isfinite(value):
            raise NonFiniteLossError(step, name, float(value))
    raise NonFiniteLossError(step, "loss", float(losses["loss"]))


def _target_to(target: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in target.items()}


def batch_inputs(batch: dict, device: torch.device) -> tuple:
    """(pixel_values, input_ids, attention_mask, image_index, image_keys) of a batch on `device`
    (image_index / image_keys None for a plain find-query batch); non_blocking copies from pinned memory."""
    def move(tensor):
        return tensor.to(device, non_blocking=True)

    image_index = batch.get("image_index")
    return (move(batch["pixel_values"]), move(batch["input_ids"]), move(batch["attention_mask"]),
            None if image_index is None else move(image_index), batch.get("image_keys"))
