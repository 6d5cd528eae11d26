"""Handlers of the "Models" tab: plain functions of (studio, plain values), bound with
functools.partial by app/ui/models_tab.py and called directly by the tests.

Showing an adapter (`pick_adapter`) returns its details, its job's loss curve and the
download button pointing at a zip of its PEFT folder, made once per adapter folder
version in a per-user temp folder (gradio copies it to its cache and serves it through
its file route, behind the login when STUDIO_USERS is set). Delete takes two clicks.
`merged_model_zip` writes the adapter merged into its base SAM3 (sam3_lora.merged_export)
as a zip in the same temp folder; `push_adapter` uploads the adapter folder to the Hub
with the token the user typed (sam3_lora.hub_push; the token is used for that call only).
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
                                list_adapters, map_before_after, zip_adapter, zip_folder)
from app.store.models import Adapter
from app.studio import Studio
from app.ui.curves import curve_frame, refresh_curve
from app.ui.messages import NO_PROJECT, refusal
from app.ui.proposal_choices import BASE_CHOICE, proposal_model_choices
from app.ui.train_jobs import map_table
from sam3_lora.hub_push import PushFolderError, is_hub_transport_error, push_folder

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


def _zip_stem(adapter: Adapter, suffix: str = "") -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"sam3-lora-{adapter.name}{suffix}").strip("-.")


def adapter_zip_path(studio: Studio, adapter: Adapter) -> Path:
    """The download zip of the adapter: `<temp>/<id>-<folder mtime>/sam3-lora-<name>.zip`, made once."""
    folder = adapter_folder(studio.media_dir, adapter)
    version = folder.stat().st_mtime_ns if folder.is_dir() else 0
    stem = _zip_stem(adapter)
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


def merged_model_zip(studio: Studio, project_id: Any, adapter_id: Any) -> tuple[Any, str]:
    """(the merged-model download button, message): the adapter folded into the SAM3 it was trained on,
    a full Sam3Model folder zipped as `<temp>/merged-<id>-<folder mtime>/sam3-lora-<name>-merged.zip`, made once."""
    try:
        _, adapter = _chosen_adapter(studio, project_id, adapter_id)
        folder = adapter_folder(studio.media_dir, adapter)
        stem = _zip_stem(adapter, "-merged")
        target = _temp_root() / f"merged-{adapter.id}-{folder.stat().st_mtime_ns}" / f"{stem}.zip"
        if not target.is_file():
            from sam3_lora.merged_export import export_merged  # torch / transformers work; only on a click

            _sweep_old_zips(_temp_root())
            with tempfile.TemporaryDirectory(dir=_temp_root()) as work:
                merged = export_merged(folder, Path(work) / stem, model_source=adapter.base_model or None)
                zip_folder(merged, target)
    except (ValueError, AdapterNotFound, FileNotFoundError, RuntimeError) as error:
        return gr.update(value=None, interactive=False), refusal("cannot merge the adapter", error)
    size_mb = target.stat().st_size / 2**20
    return (gr.update(value=str(target), interactive=True),
            f"Merged **{html.escape(adapter.name)}** into its base SAM3 ({size_mb:.0f} MB): a folder that "
            "`Sam3Model.from_pretrained` loads without PEFT.")


def push_adapter(studio: Studio, project_id: Any, adapter_id: Any, repo_id: Any, token: Any, private: Any) -> str:
    """Upload the adapter folder (PEFT files + model card) to `repo_id` on the Hub; returns the message."""
    try:
        _, adapter = _chosen_adapter(studio, project_id, adapter_id)
        url = push_folder(adapter_folder(studio.media_dir, adapter), str(repo_id or "").strip(),
                          token=str(token or "").strip() or None, private=bool(private))
    except (ValueError, AdapterNotFound, PushFolderError) as error:
        return refusal("cannot push the adapter", error)
    except Exception as error:  # the Hub refused (token, rights) or could not be reached
        if not is_hub_transport_error(error):
            raise
        return refusal("the Hub refused the upload", str(error).splitlines()[0])
    return f"Pushed **{html.escape(adapter.name)}** to `{html.escape(str(repo_id).strip())}`: {html.escape(url)}"
