"""Loss-curve data of a job, shared by the Train tab (live) and the Models tab (finished jobs).

A curve is a plain dict kept in a gr.State, read incrementally from metric rows:

    {"job_id": int | None, "attempt": int, "after_id": int,
     "points": {series_name(term, split): {step: value}}}

Only CURVE_TERMS are kept (total loss and the six unweighted terms of the last decoder
layer, train and val); lr, throughput, mAP and the per-layer auxiliary terms are left out.
Points are keyed by step, so a row written again after a resume replaces the old one; a
new attempt of the job (a resume) reads the job's rows again from the start.
"""
from __future__ import annotations

import math

import pandas as pd
from sqlalchemy import Engine

from app.jobs.metrics import read_metrics

CURVE_TERMS = ("loss", "loss_bbox", "loss_giou", "loss_ce", "loss_presence", "loss_mask", "loss_dice")
SPLITS = ("train", "val")
MAX_POINTS_PER_SERIES = 500  # the browser draws every point; longer series are thinned evenly
FRAME_COLUMNS = ["step", "value", "series"]
# matplotlib's tab20 pairs: one hue per term, dark for train, light for val.
TERM_COLOURS = {
    "loss": ("#1f77b4", "#aec7e8"), "loss_bbox": ("#ff7f0e", "#ffbb78"), "loss_giou": ("#2ca02c", "#98df8a"),
    "loss_ce": ("#d62728", "#ff9896"), "loss_presence": ("#9467bd", "#c5b0d5"), "loss_mask": ("#8c564b", "#c49c94"),
    "loss_dice": ("#e377c2", "#f7b6d2"),
}


# Short legend labels: 14 series must fit on one legend row (gradio's legend does not wrap).
TERM_LABELS = {"loss": "total", "loss_bbox": "bbox", "loss_giou": "giou", "loss_ce": "ce",
               "loss_presence": "presence", "loss_mask": "mask", "loss_dice": "dice"}


def series_name(term: str, split: str) -> str:
    """'total' (train), 'total val', 'bbox', 'bbox val', ..."""
    return TERM_LABELS[term] if split == "train" else f"{TERM_LABELS[term]} {split}"


SERIES = tuple(series_name(term, split) for term in CURVE_TERMS for split in SPLITS)
SERIES_COLOURS = {series_name(term, split): TERM_COLOURS[term][index]
                  for term in CURVE_TERMS for index, split in enumerate(SPLITS)}
"""gr.LinePlot(color_map=SERIES_COLOURS). Every frame names every series (see curve_frame), so the
chart's colour domain never changes: gradio 6's LinePlot only swaps the data of a built chart,
and rebuilding it on a new colour map races with that swap (seen: lines without a stroke, or
the previous frame's data)."""


def new_curve(job_id: int | None = None, attempt: int = 0) -> dict:
    return {"job_id": job_id, "attempt": attempt, "after_id": 0, "points": {}}


def add_rows(curve: dict, rows) -> bool:
    """Fold metric rows (id, step, split, name, value) into `curve`; True when a curve point changed."""
    changed = False
    for row in rows:
        curve["after_id"] = max(curve["after_id"], row.id)
        if row.name in CURVE_TERMS and row.split in SPLITS:
            curve["points"].setdefault(series_name(row.name, row.split), {})[row.step] = row.value
            changed = True
    return changed


def refresh_curve(engine: Engine, curve: dict | None, job_id: int | None, attempt: int = 0) -> tuple[dict, bool]:
    """(curve, changed): the rows of `job_id` written since the curve's last read folded in.

    A curve of another job or attempt (or None) starts over from the job's first row.
    """
    if not curve or curve.get("job_id") != job_id or curve.get("attempt") != attempt:
        curve, changed = new_curve(job_id, attempt), True  # a different job: the plot changes even if empty
    else:
        changed = False
    if job_id is None:
        return curve, changed
    return curve, add_rows(curve, read_metrics(engine, job_id, curve["after_id"])) or changed


def _thinned(points: list[tuple[int, float]], limit: int) -> list[tuple[int, float]]:
    if len(points) <= limit:
        return points
    stride = -(-len(points) // limit)  # ceil
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def log_loss(value: float) -> float:
    """log10 of a loss for the chart (floor 1e-6; NaN stays NaN): the weighted total (~200 at the
    start) and the unweighted terms (< 5) share one axis only on a log scale; linear, the terms
    are a flat line at the bottom."""
    return math.log10(max(value, 1e-6)) if not math.isnan(value) else value


def curve_frame(curve: dict | None, terms: list[str] | tuple[str, ...] = CURVE_TERMS,
                limit: int = MAX_POINTS_PER_SERIES) -> pd.DataFrame:
    """Long frame for gr.LinePlot(x="step", y="value", color="series"): the chosen terms, train
    then val, each series sorted by step and thinned to at most `limit` (+1 for the last) points,
    value = log_loss(loss).

    A series without points (not written yet, or its term not chosen) gets one row with value
    NaN (sent as null, which the chart skips), so every frame names all SERIES.
    """
    records = []
    for term in CURVE_TERMS:
        for split in SPLITS:
            name = series_name(term, split)
            points = sorted((curve or {}).get("points", {}).get(name, {}).items()) if term in terms else []
            records.extend((step, log_loss(value), name) for step, value in _thinned(points, limit) or [(0, math.nan)])
    # Typed even when empty: the browser keeps the axis types of the first frame it got
    # (an empty object frame would make both axes nominal for good).
    frame = pd.DataFrame.from_records(records, columns=FRAME_COLUMNS)
    return frame.astype({"step": "int64", "value": "float64", "series": "str"})

