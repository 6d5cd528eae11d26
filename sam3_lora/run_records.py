"""The folder of one `sam3-lora train` run and the records written beside its adapter, as
`yolo train` keeps them:

  runs/x/              output_dir. Training the same config again goes to runs/x2, runs/x3, ...
    args.yaml          the effective config (after --set and the folder choice), at the start
    results.csv        one row per logged training step (split "train") and per validation
                       (split "val"): step, epoch, loss, every term, lr, num_boxes, images/s, mAP
    results.png        the total loss and every term over the steps (sam3_lora.loss_plot)
    checkpoints/       written by train()
    adapter/           written by train(); the CLI adds the model card (sam3_lora.model_card)

A folder is "in use" when any file is under it: a run that failed before writing anything
(e.g. its model folder was missing) leaves at most empty folders, and the next run takes it.
"""
from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path

import yaml

from sam3_lora.loss_plot import draw_results_grid

ARGS_FILE = "args.yaml"
RESULTS_CSV = "results.csv"
RESULTS_PNG = "results.png"
FIRST_COLUMNS = ("split", "step", "epoch", "loss")


def folder_in_use(folder: Path) -> bool:
    """True when a file (not just empty folders) is under `folder`."""
    return folder.is_dir() and any(path.is_file() for path in folder.rglob("*"))


def next_run_folder(folder: str | Path) -> Path:
    """`folder` when it is not in use, else the first of folder2, folder3, ... that is not.

    runs/x -> runs/x2 -> runs/x3 (a trailing number of the name itself is kept: runs/v1 -> runs/v12).
    """
    folder = Path(folder)
    if not folder_in_use(folder):
        return folder
    number = 2
    while folder_in_use(folder.with_name(f"{folder.name}{number}")):
        number += 1
    return folder.with_name(f"{folder.name}{number}")


def write_args(output_dir: Path, config: dict) -> Path:
    """output_dir/args.yaml: `config` in the key order of TrainConfig."""
    path = Path(output_dir) / ARGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _scalar(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def result_row(event: dict) -> dict:
    """A "step" / "eval" event -> {"split": "train" | "val", step, and every finite number of it}."""
    row = {"split": "train" if event["type"] == "step" else "val"}
    row.update({name: value for name, value in event.items() if name != "type" and _scalar(value)})
    return row


def _column_key(name: str) -> tuple:
    """Fixed columns first, then the loss terms (final layer, then per layer), then the rest; by name."""
    if name in FIRST_COLUMNS:
        return (0, FIRST_COLUMNS.index(name), name)
    if name.startswith("loss_"):
        return (1, bool(re.search(r"_\d+$", name)), name)
    return (2 + name.startswith("weighted/"), 0, name)


def write_results_csv(path: Path, rows: list[dict]) -> None:
    """All `rows` with the union of their keys as columns (missing cells empty); temp file + os.replace."""
    columns = sorted({name for row in rows for name in row} | {"split", "step"}, key=_column_key)
    temp = path.with_name(f".{path.name}.tmp")
    with temp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temp, path)


def _number(text: str) -> int | float:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def read_results_csv(path: Path) -> list[dict]:
    """Rows of a results.csv (numbers as int or float, as written; empty cells left out); [] when there is none."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return [{name: value if name == "split" else _number(value) for name, value in row.items() if value != ""}
                for row in csv.DictReader(handle)]


def rows_as_history(rows: list[dict]) -> list[dict]:
    """results.csv rows -> "step" / "eval" events (what sam3_lora.loss_plot draws)."""
    return [{**row, "type": "step" if row["split"] == "train" else "eval"} for row in rows]


class RunRecords:
    """results.csv and results.png of one run, fed the events of train() (rank 0 only).

    On a resume ("start" with start_step > 0) the rows of the earlier run up to start_step
    are kept and the rest dropped, since the resumed run logs those steps again.
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.rows: list[dict] = []

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind == "start":
            earlier = read_results_csv(self.output_dir / RESULTS_CSV) if event["start_step"] > 0 else []
            self.rows = [row for row in earlier if row["step"] <= event["start_step"]]
        elif kind in ("step", "eval"):
            self.rows.append(result_row(event))
            write_results_csv(self.output_dir / RESULTS_CSV, self.rows)
        elif kind == "end" and self.rows:
            draw_results_grid(rows_as_history(self.rows), self.output_dir / RESULTS_PNG)
