"""The studio's page: a title row, the model banner, and one tab per area.

Each tab's contents come from one builder in its own module (`app/ui/<area>_tab.py`);
they share the project dropdown of the Projects & Data tab.
"""
from __future__ import annotations

from functools import partial

import gradio as gr

from app.studio import Studio
from app.ui.annotate_tab import build_annotate_tab
from app.ui.data_tab import build_data_tab
from app.ui.models_tab import build_models_tab
from app.ui.train_tab import build_train_tab

APP_TITLE = "SAM3 LoRA Studio"


def model_banner(studio: Studio) -> str:
    """The banner: the SAM3 in use, or that it is still loading; a loud warning for the tiny fallback."""
    status = studio.models.loaded_status()
    if status is None:
        return f"Model: loading SAM3 from `{studio.settings.SAM3_MODEL}`…"
    return status.banner()


def studio_banner(studio: Studio) -> str:
    """The model banner, then the embedded worker's state (studio.worker_status) on a line of its own."""
    return "  \n".join(filter(None, [model_banner(studio), studio.worker_status()]))


def refresh_banner(studio: Studio) -> tuple[str, gr.Timer]:
    """(banner, timer update): every 2 s while the model loads; then every 10 s while there is
    a worker to watch, else the timer stops."""
    loading = studio.models.loaded_status() is None
    return studio_banner(studio), gr.Timer(value=2.0 if loading else 10.0,
                                           active=loading or bool(studio.worker_status()))


def build_app(studio: Studio) -> gr.Blocks:
    """The whole UI bound to `studio`; launch it with app.ui.theme's theme and CSS."""
    # delete_cache: gradio's copies of thumbnails, uploads and export zips older than an
    # hour are removed every hour, so a long-running studio does not fill the temp disk.
    with gr.Blocks(title=APP_TITLE, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        with gr.Row(equal_height=True):
            gr.Markdown(f"# {APP_TITLE}", elem_id="studio-title")
            banner = gr.Markdown(studio_banner(studio), elem_id="studio-banner")
        with gr.Tabs() as tabs:
            with gr.Tab("Projects & Data", id="data"):
                project, open_button, selected_image = build_data_tab(studio, demo)
            with gr.Tab("Annotate", id="annotate"):
                proposal_model = build_annotate_tab(studio, demo, project, open_request=(open_button, selected_image))
            with gr.Tab("Train", id="train"):
                build_train_tab(studio, demo, project)
            with gr.Tab("Models", id="models"):
                build_models_tab(studio, demo, project, proposal_model)
        open_button.click(lambda: gr.Tabs(selected="annotate"), None, [tabs])  # the Annotate tab opens the image
        banner_timer = gr.Timer(2.0)
        demo.load(partial(refresh_banner, studio), None, [banner, banner_timer])
        banner_timer.tick(partial(refresh_banner, studio), None, [banner, banner_timer])
    return demo
