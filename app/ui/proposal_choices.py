"""Choices of the "Proposal model" dropdown, shared by the Annotate and Models tabs.

Values: "base" (SAM3 as loaded) or the adapter id as a string; labels name the adapter
and its job, so a labeller can tell rounds apart.
"""
from __future__ import annotations

from pathlib import Path

from app.store.adapters import adapter_folder, get_adapter, list_adapters
from app.studio import Studio

BASE_CHOICE = "base"


def proposal_model_choices(studio: Studio, project_id: int | None) -> list[tuple[str, str]]:
    """[(label, value)]: base SAM3 first, then the project's adapters, newest first."""
    choices = [("Base SAM3", BASE_CHOICE)]
    if project_id is not None:
        for adapter in list_adapters(studio.engine, project_id):
            job = f", job {adapter.job_id}" if adapter.job_id is not None else ""
            choices.append((f"Adapter {adapter.name} (#{adapter.id}{job})", str(adapter.id)))
    return choices


def adapter_folder_of_choice(studio: Studio, choice: str | None) -> Path | None:
    """None for the base model (or no choice); else the chosen adapter's PEFT folder.

    Raises app.store.adapters.AdapterNotFound when the adapter was deleted meanwhile.
    """
    if choice in (None, "", BASE_CHOICE):
        return None
    return adapter_folder(studio.media_dir, get_adapter(studio.engine, int(choice)))
