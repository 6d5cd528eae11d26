"""Layout of the "Models" tab (placeholder: replaced by its own issue work)."""
from __future__ import annotations

import gradio as gr

from app.studio import Studio


def build_models_tab(studio: Studio, demo: gr.Blocks, project: gr.Dropdown, proposal_model: gr.Dropdown) -> None:
    """Build the tab inside the current gr.Tab; `project` is the Projects & Data tab's project dropdown.
    `proposal_model` is the Annotate tab's proposal-model dropdown ("Use for proposals" sets it)."""
    gr.Markdown("Models: coming next.")
