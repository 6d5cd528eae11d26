"""Trained adapters of a project: list, look up, zip for download, delete (row first, then
the PEFT folder).

Rows are written by the worker (app.jobs.lifecycle.record_adapter); `path` is relative to
the media folder, so `adapter_folder` resolves it with the media store's path checks.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import select

from app.store.db import read_session, write_session
from app.store.media import media_path
from app.store.models import Adapter


class AdapterNotFound(LookupError):
    """No adapter row with that id (deleted, or never existed)."""


def list_adapters(engine: Engine, project_id: int) -> list[Adapter]:
    """The project's adapters, newest first."""
    with read_session(engine) as session:
        return list(session.exec(select(Adapter).where(Adapter.project_id == project_id).order_by(Adapter.id.desc())))


def get_adapter(engine: Engine, adapter_id: int) -> Adapter:
    with read_session(engine) as session:
        adapter = session.get(Adapter, adapter_id)
    if adapter is None:
        raise AdapterNotFound(f"adapter {adapter_id} does not exist (deleted?)")
    return adapter


def adapter_folder(media_dir: Path | str, adapter: Adapter) -> Path:
    """The adapter's PEFT folder (adapter_config.json + adapter_model.safetensors + README.md)."""
    return media_path(media_dir, adapter.path)


def adapter_metrics(adapter: Adapter) -> dict:
    return json.loads(adapter.metrics_json or "{}")


def delete_adapter(engine: Engine, media_dir: Path | str, adapter_id: int) -> Adapter:
    """Delete the row, then its folder; returns the deleted row. A missing folder is not an error."""
    with write_session(engine) as session:
        adapter = session.get(Adapter, adapter_id)
        if adapter is None:
            raise AdapterNotFound(f"adapter {adapter_id} does not exist (deleted?)")
        session.delete(adapter)
    shutil.rmtree(adapter_folder(media_dir, adapter), ignore_errors=True)
    return adapter


def adapter_of_job(engine: Engine, job_id: int) -> Adapter | None:
    """The adapter a job recorded (at most one: run_job records once per job), or None."""
    with read_session(engine) as session:
        return session.exec(select(Adapter).where(Adapter.job_id == job_id).order_by(Adapter.id.desc())).first()


MAP_NAMES = ("segm_mAP", "bbox_mAP")


def map_before_after(metrics: dict) -> dict[str, tuple[float | None, float | None]]:
    """{"segm_mAP": (before, after), "bbox_mAP": (...)} from an adapter's metrics (eval_before /
    eval_after as written by worker/run_job.py); None where an evaluation or a value is missing."""
    def value(evaluation, name: str) -> float | None:
        number = (evaluation or {}).get(name)
        return float(number) if isinstance(number, (int, float)) and not isinstance(number, bool) else None

    return {name: (value(metrics.get("eval_before"), name), value(metrics.get("eval_after"), name))
            for name in MAP_NAMES}


def zip_adapter(media_dir: Path | str, adapter: Adapter, target: Path) -> Path:
    """Write `target` (.zip) holding the adapter's PEFT folder as `<target stem>/<files>`
    (adapter_config.json, adapter_model.safetensors, README.md model card, loss_curve.png).

    FileNotFoundError names a missing file; see `zip_folder`.
    """
    folder = adapter_folder(media_dir, adapter)
    for required in ("adapter_config.json", "adapter_model.safetensors"):
        if not (folder / required).is_file():
            raise FileNotFoundError(f"adapter {adapter.name!r}: {required} is missing from its folder {adapter.path}")
    return zip_folder(folder, target)


def zip_folder(folder: Path, target: Path) -> Path:
    """Write `target` (.zip) holding the files of `folder` (top level) as `<target stem>/<name>`.

    Written to a temp name and renamed, so a reader never sees half a zip. Weights are
    stored, not deflated (safetensors barely compress).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with zipfile.ZipFile(partial, "w") as archive:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            method = zipfile.ZIP_STORED if path.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
            archive.write(path, f"{target.stem}/{path.name}", compress_type=method)
    os.replace(partial, target)
    return target
