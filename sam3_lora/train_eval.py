"""Validation during training: the same criterion as training (no gradient) and COCO mAP.

val loss term = mean over val batches of the criterion's term, each batch
normalised by its own num_boxes (the train code path, `compute_num_boxes`).
"""
from __future__ import annotations

import torch

from sam3_lora import dist
from sam3_lora.evaluate import evaluate
from sam3_lora.group_loader import build_group_loader
from sam3_lora.layer_outputs import forward_with_layer_outputs, unwrap_sam3
from sam3_lora.losses import compute_num_boxes
from sam3_lora.train_step import batch_inputs


def validation_loss(model, criterion, dataset, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """Mean of each unweighted term and of the total over the val set (image groups of `batch_size` images)."""
    loader = build_group_loader(dataset, batch_size, seed=0, shuffle=False)
    sums: dict[str, float] = {}
    batches = 0
    for batch in loader:
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in batch["targets"]]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            outputs = forward_with_layer_outputs(model, *batch_inputs(batch, device))
        losses = criterion(outputs, targets, compute_num_boxes(targets, device))
        for name, value in losses.items():
            if not name.startswith("weighted/"):
                sums[name] = sums.get(name, 0.0) + float(value)
        batches += 1
    return {name: total / max(batches, 1) for name, total in sums.items()}


@torch.no_grad()
def run_evaluation(model, peft_model, criterion, data, tokenizer, device: torch.device, dtype: torch.dtype, step: int,
                   with_map: bool) -> dict:
    """{"split": "val", <val loss terms>, and with_map: segm_mAP, bbox_mAP, *_mAP50, per_concept} (mAP on rank 0).

    `model` runs the val loss (the training wrapper, DDP included); `peft_model` the mAP (predict_many)."""
    was_training = model.training
    model.eval()
    try:
        result = {"split": "val", **validation_loss(model, criterion, data.val, data.batch_size, device, dtype)}
        if with_map and dist.is_main_process():
            unwrap_sam3(peft_model)  # fails loudly if the wrapper hides the SAM3
            result.update(evaluate(peft_model, tokenizer, data.val_coco, data.val_image_dir, data.val_image_ids).to_dict())
    finally:
        model.train(was_training)
    return result
