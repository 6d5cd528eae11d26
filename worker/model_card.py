"""The model card of a trained adapter: README.md (config, data, before/after mAP) and
loss_curve.png, drawn with Pillow (no plotting library in the worker image).

Curve: x = optimiser step, y = total loss; training points from the "step" events of
`TrainResult.history`, validation points from its "eval" events. Axes are linear,
y from 0 to the largest loss, so two cards compare by eye.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from sam3_lora.train import TrainResult

CARD_FILE = "README.md"
CURVE_FILE = "loss_curve.png"
WIDTH, HEIGHT, MARGIN = 640, 360, 48
TRAIN_COLOUR, VAL_COLOUR, AXIS_COLOUR = (31, 119, 180), (214, 39, 40), (60, 60, 60)


def loss_points(history: list[dict], kind: str) -> list[tuple[int, float]]:
    """[(step, loss), ...] of the history's events of `kind` ("step" or "eval") with a finite loss."""
    return [(int(e["step"]), float(e["loss"])) for e in history
            if e.get("type") == kind and isinstance(e.get("loss"), (int, float)) and math.isfinite(e["loss"])]


def draw_loss_curve(history: list[dict], path: Path) -> Path:
    """Write the loss curve PNG (WIDTH x HEIGHT): train as a line, val as dots; returns `path`."""
    train, val = loss_points(history, "step"), loss_points(history, "eval")
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN, MARGIN // 2, WIDTH - MARGIN // 2, HEIGHT - MARGIN
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS_COLOUR, width=1)
    points = train + val
    max_step = max([step for step, _ in points] + [1])
    max_loss = max([loss for _, loss in points] + [1e-12])

    def to_pixel(step: int, loss: float) -> tuple[float, float]:
        return (left + (right - left) * step / max_step, bottom - (bottom - top) * loss / max_loss)

    if len(train) > 1:
        draw.line([to_pixel(*p) for p in train], fill=TRAIN_COLOUR, width=2)
    for step, loss in train[:1] if len(train) == 1 else []:
        x, y = to_pixel(step, loss)
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=TRAIN_COLOUR)
    for step, loss in val:
        x, y = to_pixel(step, loss)
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=VAL_COLOUR)
    draw.text((left, bottom + 8), f"step 0 .. {max_step}", fill=AXIS_COLOUR)
    draw.text((left + 4, top), f"loss (max {max_loss:.4g})", fill=AXIS_COLOUR)
    draw.text((right - 160, top), "- train", fill=TRAIN_COLOUR)
    draw.text((right - 90, top), "o val", fill=VAL_COLOUR)
    image.save(path, format="PNG")
    return path


def _map_line(label: str, evaluation: dict | None) -> str:
    if not evaluation:
        return f"| {label} | - | - |"
    values = [evaluation.get(name) for name in ("segm_mAP", "bbox_mAP")]
    shown = [f"{v:.4f}" if isinstance(v, (int, float)) and math.isfinite(v) else "-" for v in values]
    return f"| {label} | {shown[0]} | {shown[1]} |"


def model_card_text(job_id: int, config: dict, result: TrainResult, partial: bool) -> str:
    status = f"partial: stopped at step {result.steps} on request" if partial else f"complete: {result.steps} steps"
    lines = [
        f"# SAM3 LoRA adapter of job {job_id}",
        "",
        f"Status: {status}. Base model: `{config.get('model', {}).get('source', '')}`.",
        "",
        "Load with `PeftModel.from_pretrained(Sam3Model.from_pretrained(base), this_folder)`.",
        "",
        "## Evaluation (COCO mAP on the validation split)",
        "",
        "| | segm mAP | bbox mAP |",
        "|---|---|---|",
        _map_line("before", result.eval_before),
        _map_line("after", result.eval_after),
        "",
        "## Data",
        "",
        "```json",
        json.dumps(result.dataset, indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Loss curve",
        "",
        f"![loss curve]({CURVE_FILE})",
        "",
        "## Training config",
        "",
        "```json",
        json.dumps(config, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(folder: Path, job_id: int, config: dict, result: TrainResult, partial: bool) -> Path:
    """Write folder/README.md (replacing peft's stub) and folder/loss_curve.png; returns the README path."""
    folder = Path(folder)
    draw_loss_curve(result.history, folder / CURVE_FILE)
    card = folder / CARD_FILE
    card.write_text(model_card_text(job_id, config, result, partial), encoding="utf-8")
    return card
