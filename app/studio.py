"""The running studio's handles: settings, database engine, media folder, proposal models,
and the embedded worker's state.

Built once at start (`open_studio`), passed to the UI handlers and the worker.
`models` loads nothing until first used (app.model_service).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sqlalchemy import Engine

from app.model_service import ProposalModels
from app.settings import Settings
from app.store.db import make_engine


@dataclass(frozen=True)
class Studio:
    settings: Settings
    engine: Engine
    models: ProposalModels = field(default=None)  # type: ignore[assignment]  # set in __post_init__
    # The embedded worker's state in words for the banner (BackgroundServices.worker_status); "" for none.
    worker_status: Callable[[], str] = field(default=lambda: "")

    def __post_init__(self) -> None:
        if self.models is None:
            object.__setattr__(self, "models", ProposalModels(self.settings))

    @property
    def media_dir(self) -> Path:
        return self.settings.media_dir


def open_studio(settings: Settings, migrate: bool = True) -> Studio:
    """Create DATA_DIR and the media folder, bring the schema to head, open the engine."""
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    settings.media_dir.mkdir(parents=True, exist_ok=True)
    if migrate:
        from app.store.migrate import upgrade_database

        upgrade_database(settings.database_url)
    return Studio(settings=settings, engine=make_engine(settings.database_url))
