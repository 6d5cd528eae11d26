"""Layout of the "Models" tab: builds the components and wires them to app.ui.models_handlers
(bound to the studio with functools.partial). No logic here."""
from __future__ import annotations

from functools import partial

import gradio as gr

from app.studio import Studio
from app.ui import models_handlers as handlers
from app.ui.curves import SERIES_COLOURS, curve_frame
from app.ui.review_outcomes import outcomes_markdown


def build_models_tab(studio: Studio, demo: gr.Blocks, project: gr.Dropdown, proposal_model: gr.Dropdown) -> None:
    """Build the tab inside the current gr.Tab; `project` is the Projects & Data tab's project dropdown.
    `proposal_model` is the Annotate tab's proposal-model dropdown ("Use for proposals" sets it)."""
    tab = gr.context.Context.block  # the enclosing gr.Tab: entering it lists adapters trained meanwhile
    with gr.Row():
        gr.Markdown("### Trained adapters")
        refresh_button = gr.Button("Refresh", size="sm", scale=0, elem_id="models-refresh")
    adapters = gr.Dataframe(headers=handlers.ADAPTER_HEADERS, value=[], interactive=False, max_height=260,
                            elem_id="models-list")
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            choice = gr.Dropdown(label="Adapter", choices=[], value=None, elem_id="models-choice")
            with gr.Row():
                download = gr.DownloadButton("Download zip (PEFT folder)", value=None, interactive=False,
                                             elem_id="models-download")
                use_button = gr.Button("Use for proposals", variant="primary", elem_id="models-use")
                delete_button = gr.Button("Delete", variant="stop", elem_id="models-delete")
            message = gr.Markdown(elem_id="models-message")
            pending_delete = gr.State(None)
            with gr.Accordion("Use it elsewhere: merged SAM3, Hugging Face Hub", open=False):
                with gr.Row():
                    merge_button = gr.Button("Merge into SAM3", elem_id="models-merge")
                    merged_download = gr.DownloadButton("Download merged model (zip)", value=None, interactive=False,
                                                        elem_id="models-merged-download")
                with gr.Row():
                    repo_id = gr.Textbox(label="Hub repository", placeholder="your-name/sam3-lora-cracks",
                                         elem_id="models-repo")
                    token = gr.Textbox(label="Hub token (write access; used for this push only, not stored)",
                                       type="password", elem_id="models-token")
                with gr.Row():
                    private = gr.Checkbox(label="private repository", value=True, elem_id="models-private")
                    push_button = gr.Button("Push adapter to the Hub", elem_id="models-push")
        with gr.Column(scale=3, min_width=420):
            details = gr.Markdown(elem_id="models-details")
            outcomes = gr.Markdown(elem_id="models-outcomes")
    curve = gr.LinePlot(curve_frame(None), x="step", y="value", color="series", color_map=SERIES_COLOURS,
                        label="Loss curve of its job: train (dark), val (light)", x_title="step", y_title="log10 loss",
                        color_title="", elem_id="models-curve")

    # ---- wiring
    shown = [details, curve, download, message, pending_delete]
    show = partial(handlers.show_models, studio)
    demo.load(show, [project, choice], [adapters, choice, *shown])
    project.change(show, [project], [adapters, choice, *shown])
    refresh_button.click(show, [project, choice], [adapters, choice, *shown])
    if isinstance(tab, gr.Tab):
        tab.select(show, [project, choice], [adapters, choice, *shown])
    show_outcomes = partial(outcomes_markdown, studio)
    for event in (demo.load, project.change, refresh_button.click, *([tab.select] if isinstance(tab, gr.Tab) else [])):
        event(show_outcomes, [project], [outcomes])
    choice.input(partial(handlers.pick_adapter, studio), [project, choice], shown)
    choice.change(lambda: gr.update(value=None, interactive=False), None, merged_download)  # it was of another
    merge_button.click(partial(handlers.merged_model_zip, studio), [project, choice], [merged_download, message])
    push_button.click(partial(handlers.push_adapter, studio), [project, choice, repo_id, token, private], [message])
    use_button.click(partial(handlers.use_for_proposals, studio), [project, choice], [proposal_model, message])
    delete_button.click(
        partial(handlers.delete_adapter_twice, studio), [project, choice, pending_delete, proposal_model],
        [adapters, choice, details, curve, download, message, pending_delete, proposal_model],
    )
