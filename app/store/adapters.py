"""Trained adapters of a project: list, look up, delete (row first, then the PEFT folder).

Rows are written by the worker (app.store.jobs.record_adapter); `path` is relative to
the media folder, so `adapter_folder` resolves it with the media store's path checks.
"""
from __future__ import annotations

import json
import shutil
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
