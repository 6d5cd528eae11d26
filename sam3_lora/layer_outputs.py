"""Run Sam3Model and also return every decoder layer's predictions (for the aux losses).

`Sam3Model.forward` keeps only the last decoder layer. Forward hooks catch what it
computes for all layers anyway (transformers 5.23, modeling_sam3.py):
- `detr_decoder` returns `reference_boxes [L,B,Q,4]` (cxcywh, in sigmoid space)
  and `presence_logits [L,B,1]`;
- `detr_decoder.box_head`, called once on all layers' hidden states [L,B,Q,C]
  (its per-layer calls inside the decoder loop get [B,Q,C]), returns the box
  offsets, so layer boxes = sigmoid(inverse_sigmoid(ref) + offsets), cxcywh;
- `dot_product_scoring` returns all-layer logits [L,B,Q,1].
Hooking box_head instead of calling it again keeps every parameter use inside the
model's forward, which is what DDP expects. The last layer equals the model's own
`pred_*` bit for bit (tested).
"""
from __future__ import annotations

import torch
from transformers import Sam3Model
from transformers.models.sam3.modeling_sam3 import inverse_sigmoid

# Wrappers around the Sam3Model and how to reach what they wrap:
# DDP / DataParallel (.module), torch.compile (._orig_mod), peft PeftModel (.get_base_model()).
_WRAPPER_ATTRIBUTES = ("module", "_orig_mod")


def unwrap_sam3(model: torch.nn.Module) -> Sam3Model:
    """The Sam3Model inside DDP / torch.compile / peft wrappers (or `model` itself)."""
    current = model
    for _ in range(8):  # a handful of nested wrappers at most; a loop guard, not a limit anyone meets
        if isinstance(current, Sam3Model):
            return current
        if hasattr(current, "get_base_model"):
            current = current.get_base_model()
            continue
        wrapped = next((getattr(current, name) for name in _WRAPPER_ATTRIBUTES if hasattr(current, name)), None)
        if wrapped is None:
            break
        current = wrapped
    raise TypeError(f"no Sam3Model found inside {type(model).__name__}")


def forward_with_layer_outputs(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_index: torch.Tensor | None = None,
    image_keys: list[str] | None = None,
) -> dict:
    """Call `model` (Sam3Model, possibly wrapped) once; return final and per-layer outputs.

    pixel_values [B,3,S,S], input_ids / attention_mask [B,32] ->
    (or, for a GroupedSam3, pixel_values [N,3,S,S] and image_index [B]: query b asks image image_index[b])
    {"pred_logits" [B,Q], "pred_boxes" [B,Q,4] cxcywh, "pred_masks" [B,Q,S/3.5,S/3.5] logits,
     "presence_logits" [B,1],
     "aux_outputs": L-1 dicts {"pred_logits" [B,Q], "pred_boxes" [B,Q,4] cxcywh,
                                "presence_logits" [B,1]} for decoder layers 0..L-2}.
    The wrapper's own forward is called, so DDP gradient sync and LoRA stay in effect.
    """
    sam3 = unwrap_sam3(model)
    captured: dict[str, object] = {}

    def keep_decoder(module, args, output) -> None:
        captured["decoder"] = output

    def keep_scores(module, args, output) -> None:
        captured["scores"] = output

    def keep_all_layer_offsets(module, args, output) -> None:
        if output.ndim == 4:
            captured["box_offsets"] = output

    handles = [
        sam3.detr_decoder.register_forward_hook(keep_decoder),
        sam3.dot_product_scoring.register_forward_hook(keep_scores),
        sam3.detr_decoder.box_head.register_forward_hook(keep_all_layer_offsets),
    ]
    try:
        grouped = {} if image_index is None else {"image_index": image_index, "image_keys": image_keys}
        outputs = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, **grouped)
    finally:
        for handle in handles:
            handle.remove()
    missing = {"decoder", "scores", "box_offsets"} - captured.keys()
    if missing:
        raise RuntimeError(f"SAM3 forward did not produce {sorted(missing)}; this transformers version is not supported")

    decoder = captured["decoder"]
    layer_boxes = (inverse_sigmoid(decoder.reference_boxes) + captured["box_offsets"]).sigmoid()  # [L,B,Q,4]
    layer_logits = captured["scores"].squeeze(-1)  # [L,B,Q]
    layer_presence = decoder.presence_logits  # [L,B,1]
    aux_outputs = [
        {"pred_logits": layer_logits[layer], "pred_boxes": layer_boxes[layer], "presence_logits": layer_presence[layer]}
        for layer in range(layer_boxes.shape[0] - 1)
    ]
    return {
        "pred_logits": outputs.pred_logits,
        "pred_boxes": layer_boxes[-1],
        "pred_masks": outputs.pred_masks,
        "presence_logits": outputs.presence_logits,
        "aux_outputs": aux_outputs,
    }

