"""Layout of the "Train" tab (placeholder: replaced by its own issue work)."""
from __future__ import annotations

import gradio as gr

from app.studio import Studio


def build_train_tab(studio: Studio, demo: gr.Blocks, project: gr.Dropdown) -> None:
    """Build the tab inside the current gr.Tab; `project` is the Projects & Data tab's project dropdown."""
    gr.Markdown("Train: coming next.")
