"""The studio's page: a title row, a banner, and one tab per area.

Each tab's contents come from one function (`build_<area>_tab`), so a later issue
replaces a placeholder below by importing its own builder.
"""
from __future__ import annotations

import gradio as gr

from app.studio import Studio
from app.ui.data_tab import build_data_tab

APP_TITLE = "SAM3 LoRA Studio"


def build_annotate_tab(studio: Studio) -> None:
    gr.Markdown("Annotate: SAM3 proposals from text, point and box prompts, corrected with a brush. Coming next.")


def build_train_tab(studio: Studio) -> None:
    gr.Markdown("Train: fine-tune a LoRA adapter on this project's labels and watch the loss curve live. Coming next.")


def build_models_tab(studio: Studio) -> None:
    gr.Markdown("Models: trained adapters with their metrics, to download or use for proposals. Coming next.")


def model_banner(studio: Studio) -> str:
    """The banner line; the model's load status is wired in by the annotate issue."""
    return f"Model: `{studio.settings.SAM3_MODEL}`"


def build_app(studio: Studio) -> gr.Blocks:
    """The whole UI bound to `studio`; launch it with app.ui.theme's theme and CSS."""
    # delete_cache: gradio's copies of thumbnails, uploads and export zips older than an
    # hour are removed every hour, so a long-running studio does not fill the temp disk.
    with gr.Blocks(title=APP_TITLE, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        with gr.Row(equal_height=True):
            gr.Markdown(f"# {APP_TITLE}", elem_id="studio-title")
            gr.Markdown(model_banner(studio), elem_id="studio-banner")
        with gr.Tabs():
            with gr.Tab("Projects & Data", id="data"):
                build_data_tab(studio, demo)
            with gr.Tab("Annotate", id="annotate"):
                build_annotate_tab(studio)
            with gr.Tab("Train", id="train"):
                build_train_tab(studio)
            with gr.Tab("Models", id="models"):
                build_models_tab(studio)
    return demo
