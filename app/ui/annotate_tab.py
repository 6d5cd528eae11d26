"""Layout of the "Annotate" tab (placeholder: replaced by its own issue work)."""
from __future__ import annotations

import gradio as gr

from app.studio import Studio


def build_annotate_tab(studio: Studio, demo: gr.Blocks, project: gr.Dropdown) -> gr.Dropdown:
    """Build the tab inside the current gr.Tab; `project` is the Projects & Data tab's project dropdown.
    Returns the proposal-model dropdown (values from app.ui.proposal_choices), which the Models tab sets."""
    gr.Markdown("Annotate: coming next.")
    return gr.Dropdown(label="Proposal model", choices=[("Base SAM3", "base")], value="base", elem_id="annotate-model")
