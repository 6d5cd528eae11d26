"""Handlers of the "Models" tab: plain functions of (studio, plain values), bound with
functools.partial by app/ui/models_tab.py and called directly by the tests.

Showing an adapter (`pick_adapter`) returns its details, its job's loss curve and the
download button pointing at a zip of its PEFT folder, made once per adapter folder
version in a per-user temp folder (gradio copies it to its cache and serves it through
its file route, behind the login when STUDIO_USERS is set). Delete takes two clicks.
"""
from __future__ import annotations

import getpass
import html
import math
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr

from app.store.adapters import (AdapterNotFound, adapter_folder, adapter_metrics, delete_adapter, get_adapter,
                                list_adapters, map_before_after, zip_adapter)
from app.store.models import Adapter
from app.studio import Studio
from app.ui.curves import curve_frame, refresh_curve
from app.ui.messages import NO_PROJECT, refusal
from app.ui.proposal_choices import BASE_CHOICE, proposal_model_choices
from app.ui.train_jobs import map_table

ADAPTER_HEADERS = ["Id", "Name", "Job", "Created (UTC)", "Base model", "segm mAP", "bbox mAP"]
ZIP_MAX_AGE_S = 3600  # gradio has copied a zip into its cache long before this


def _project_id(project_id: Any) -> int | None:
    return None if project_id in (None, "") else int(project_id)


def _before_after(pair: tuple[float | None, float | None]) -> str:
    """'0.1200 → 0.3400', '- → 0.3400', '-'."""
    before, after = ("-" if v is None or not math.isfinite(v) else f"{v:.4f}" for v in pair)
    return "-" if before == after == "-" else f"{before} → {after}"


def adapter_rows(studio: Studio, project_id: Any) -> list[list]:
    """ADAPTER_HEADERS rows of the project's adapters, newest first."""
    project_id = _project_id(project_id)
    if project_id is None:
        return []
    rows = []
    for adapter in list_adapters(studio.engine, project_id):
        maps = map_before_after(adapter_metrics(adapter))
        rows.append([adapter.id, adapter.name, adapter.job_id if adapter.job_id is not None else "-",
                     adapter.created_at.strftime("%Y-%m-%d %H:%M"), adapter.base_model,
                     _before_after(maps["segm_mAP"]), _before_after(maps["bbox_mAP"])])
    return rows


def adapter_dropdown(studio: Studio, project_id: Any, selected: Any = None) -> dict:
    """Choices of the project's adapters; keeps `selected` when it still exists, else the newest."""
    project_id = _project_id(project_id)
    adapters = list_adapters(studio.engine, project_id) if project_id is not None else []
    ids = [adapter.id for adapter in adapters]
    value = int(selected) if selected not in (None, "") and int(selected) in ids else (ids[0] if ids else None)
    return gr.update(choices=[(f"{a.name} (#{a.id})", a.id) for a in adapters], value=value)


def _temp_root() -> Path:
    """Per-user folder under the system temp dir (DATA_DIR is never served)."""
    root = Path(tempfile.gettempdir()) / f"sam3-studio-{getpass.getuser()}" / "adapter-zips"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def _sweep_old_zips(root: Path) -> None:
    cutoff = time.time() - ZIP_MAX_AGE_S
    for folder in root.iterdir():
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # another session swept it first
            continue


def adapter_zip_path(studio: Studio, adapter: Adapter) -> Path:
    """The download zip of the adapter: `<temp>/<id>-<folder mtime>/sam3-lora-<name>.zip`, made once."""
    folder = adapter_folder(studio.media_dir, adapter)
    version = folder.stat().st_mtime_ns if folder.is_dir() else 0
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", f"sam3-lora-{adapter.name}").strip("-.")
    root = _temp_root()
    target = root / f"{adapter.id}-{version}" / f"{stem}.zip"
    if not target.is_file():
        _sweep_old_zips(root)
        zip_adapter(studio.media_dir, adapter, target)
    return target


def adapter_details(studio: Studio, adapter: Adapter) -> str:
    metrics = adapter_metrics(adapter)
    job = f"job {adapter.job_id}" if adapter.job_id is not None else "a deleted job"
    lines = [f"**{html.escape(adapter.name)}** (#{adapter.id}) from {job}, "
             f"{adapter.created_at.strftime('%Y-%m-%d %H:%M')} UTC",
             "", f"Base model: `{adapter.base_model or 'unknown'}` · steps: {metrics.get('steps', '-')}"]
    train = (metrics.get("dataset") or {}).get("train") or {}
    if train:
        lines.append(f" · trained on {train.get('images', '-')} images, {train.get('instances', '-')} instances")
    lines += ["", map_table(metrics)]
    return "\n".join(lines)


def pick_adapter(studio: Studio, project_id: Any, adapter_id: Any) -> tuple:
    """(details markdown, loss-curve frame, download button update, message, pending delete = None)."""
    empty = curve_frame(None)
    if adapter_id in (None, ""):
        return "No adapter yet: fine-tune one in the Train tab.", empty, gr.update(value=None, interactive=False), "", None
    try:
        adapter = get_adapter(studio.engine, int(adapter_id))
        if adapter.project_id != _project_id(project_id):
            raise AdapterNotFound(f"adapter {adapter_id} is not in this project")
    except AdapterNotFound as error:
        return "", empty, gr.update(value=None, interactive=False), refusal("cannot show the adapter", error), None
    curve, _ = refresh_curve(studio.engine, None, adapter.job_id)
    try:
        download = gr.update(value=str(adapter_zip_path(studio, adapter)), interactive=True)
        message = ""
    except FileNotFoundError as error:
        download, message = gr.update(value=None, interactive=False), refusal("cannot offer the download", error)
    return adapter_details(studio, adapter), curve_frame(curve), download, message, None


def show_models(studio: Studio, project_id: Any, selected: Any = None) -> tuple:
    """Page load / project change / refresh: (rows, dropdown, *pick_adapter of the shown adapter)."""
    dropdown = adapter_dropdown(studio, project_id, selected)
    return (adapter_rows(studio, project_id), dropdown, *pick_adapter(studio, project_id, dropdown["value"]))


def _chosen_adapter(studio: Studio, project_id: Any, adapter_id: Any) -> tuple[int, Any]:
    """(project id, Adapter row) of the dropdowns' values; ValueError / AdapterNotFound name what is missing."""
    project_id = _project_id(project_id)
    if project_id is None:
        raise ValueError(NO_PROJECT)
    if adapter_id in (None, ""):
        raise ValueError("choose an adapter first")
    return project_id, get_adapter(studio.engine, int(adapter_id))


def use_for_proposals(studio: Studio, project_id: Any, adapter_id: Any) -> tuple[Any, str]:
    """(the Annotate tab's proposal-model dropdown set to the adapter, message)."""
    try:
        project_id, adapter = _chosen_adapter(studio, project_id, adapter_id)
    except (ValueError, AdapterNotFound) as error:
        return gr.update(), refusal("cannot use the adapter for proposals", error)
    dropdown = gr.Dropdown(choices=proposal_model_choices(studio, project_id), value=str(adapter.id))
    return dropdown, f"Annotate now proposes with **{html.escape(adapter.name)}**."


def delete_adapter_twice(studio: Studio, project_id: Any, adapter_id: Any, pending_delete: Any,
                         proposal_choice: Any) -> tuple:
    """Two clicks: the first arms (pending = the adapter id), the second deletes the row and its folder.
    -> (rows, dropdown, details, curve, download, message, pending, proposal-model dropdown)."""
    unchanged = (gr.update(),) * 5
    try:
        project_id, adapter = _chosen_adapter(studio, project_id, adapter_id)
    except (ValueError, AdapterNotFound) as error:
        return (*unchanged, refusal("cannot delete the adapter", error), None, gr.update())
    if pending_delete in (None, "") or int(pending_delete) != adapter.id:
        message = (f"Delete adapter **{html.escape(adapter.name)}** and its files? "
                   "Click **Delete** again to confirm.")
        return (*unchanged, message, adapter.id, gr.update())
    studio.models.forget(adapter_folder(studio.media_dir, adapter))
    delete_adapter(studio.engine, studio.media_dir, adapter.id)
    rows, dropdown, details, curve, download, _, _ = show_models(studio, project_id)
    keep = proposal_choice if proposal_choice not in (None, "", str(adapter.id)) else BASE_CHOICE
    proposals = gr.Dropdown(choices=proposal_model_choices(studio, project_id), value=keep)
    return (rows, dropdown, details, curve, download, f"Deleted adapter **{html.escape(adapter.name)}**.",
            None, proposals)
