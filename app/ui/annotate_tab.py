"""Layout of the "Annotate" tab: builds the components and wires them to the annotate_*
handler modules (bound to the studio with functools.partial). No logic here.

Every handler takes (session, threshold, ...) and returns the seven VIEW outputs of
app.ui.annotate_view. Each runs in its browser session's order (app.ui.session_order:
one at a time per page, pages side by side), with a small progress mark instead of
blanking the outputs while it runs.
"""
from __future__ import annotations

from functools import partial

import gradio as gr

from app.studio import Studio
from app.ui import annotate_edits as edits
from app.ui import annotate_memory as memory
from app.ui import annotate_navigation as navigation
from app.ui import annotate_proposals as proposals
from app.ui.annotate_masks import EDITOR_CANVAS, LAYER_NAME, concept_brush
from app.ui.annotate_shortcuts import SHORTCUT_HELP, SHORTCUTS_JS
from app.ui.annotate_undo import undo
from app.ui.annotate_view import (
    ALL_STATUSES, DEFAULT_THRESHOLD, INSTANCE_HEADERS, NO_CONCEPT_COLOR, SCROLL_TO_SELECTED_JS, new_session,
)
from app.ui.proposal_choices import BASE_CHOICE
from app.ui.session_order import SESSION_PARALLELISM
from app.ui.session_order import in_session_order as ordered

EDITS = {"concurrency_id": "annotate", "concurrency_limit": SESSION_PARALLELISM, "show_progress": "minimal"}
OVERLAY_FORMAT = "jpeg"  # encodes ~10x faster than PNG; the overlay is only looked at


def build_annotate_tab(studio: Studio, demo: gr.Blocks, project: gr.Dropdown,
                       open_request: tuple[gr.Button, gr.State] | None = None) -> gr.Dropdown:
    """Build the tab inside the current gr.Tab; `project` is the Projects & Data tab's project dropdown,
    `open_request` its "Open in Annotate" button and selected image id (a click opens that image here).
    Returns the proposal-model dropdown (values from app.ui.proposal_choices), which the Models tab sets."""
    tab = gr.context.Context.block  # the enclosing gr.Tab: entering it refreshes lists changed elsewhere
    session = gr.State(new_session())
    remembered = gr.BrowserState({}, storage_key=memory.STORAGE_KEY)  # open image + threshold per project
    with gr.Row(equal_height=True):
        status_filter = gr.Radio(list(navigation.STATUS_FILTERS), value=ALL_STATUSES, label="Show",
                                 elem_id="annotate-status-filter", scale=2)
        image_list = gr.Dropdown(label="Image", choices=[], value=None, elem_id="annotate-image", scale=3)
        with gr.Column(scale=1, min_width=200):
            image_info = gr.Markdown("No image open.", elem_id="annotate-image-info")
            with gr.Row():
                prev_button = gr.Button("◀ Previous", elem_id="annotate-prev", size="sm")
                next_button = gr.Button("Next ▶", elem_id="annotate-next", size="sm")
    with gr.Row(equal_height=True):
        concept = gr.Dropdown(label="Concept", choices=[], value=None, elem_id="annotate-concept", scale=2)
        model = gr.Dropdown(label="Proposal model", choices=[("Base SAM3", BASE_CHOICE)], value=BASE_CHOICE,
                            elem_id="annotate-model", scale=2)
        find_all_button = gr.Button("Find all", variant="primary", elem_id="annotate-find-all", scale=1)
        threshold = gr.Slider(0, 1, value=DEFAULT_THRESHOLD, step=0.01, label="Show proposals scoring at least",
                              elem_id="annotate-threshold", scale=2)
    message = gr.Markdown(elem_id="annotate-message")
    with gr.Row():
        with gr.Column(scale=1, min_width=360):
            mode = gr.Radio(list(proposals.CLICK_MODES), value=proposals.MODE_SELECT, label="A click on the image does",
                            elem_id="annotate-click-mode")
            gr.Markdown("Instances: click one to select it", elem_id="annotate-overlay-caption")
            overlay = gr.Image(label="Instances", show_label=False, type="pil", format=OVERLAY_FORMAT, interactive=False,
                               buttons=["fullscreen"], elem_id="annotate-overlay")
            with gr.Row():
                new_button = gr.Button("New instance", size="sm", elem_id="annotate-new")
                other_mask_button = gr.Button("Other mask", size="sm", elem_id="annotate-other-mask")
                clear_clicks_button = gr.Button("Clear clicks", size="sm", elem_id="annotate-clear-clicks")
        with gr.Column(scale=1, min_width=360):
            editor = gr.ImageEditor(
                label="Brush / eraser: the selected instance", type="numpy", image_mode="RGBA", format="png",
                sources=None, transforms=(), layers=gr.LayerOptions(allow_additional_layers=False, layers=[LAYER_NAME]),
                brush=concept_brush(NO_CONCEPT_COLOR), eraser=gr.Eraser(), canvas_size=EDITOR_CANVAS,
                elem_id="annotate-editor",
            )
            with gr.Row():
                save_button = gr.Button("Save mask", variant="primary", size="sm", elem_id="annotate-save-mask")
                reload_button = gr.Button("Reload", size="sm", elem_id="annotate-reload")
    instances = gr.Dataframe(headers=INSTANCE_HEADERS, value=[], interactive=False, max_height=300,
                             label="Instances of this image (click a row to select)", elem_id="annotate-instances")
    with gr.Row():
        accept_button = gr.Button("Accept", variant="primary", size="sm", elem_id="annotate-accept")
        reject_button = gr.Button("Reject", size="sm", elem_id="annotate-reject")
        delete_button = gr.Button("Delete", variant="stop", size="sm", elem_id="annotate-delete")
        relabel_button = gr.Button("Relabel as concept", size="sm", elem_id="annotate-relabel")
        undo_button = gr.Button("Undo", size="sm", elem_id="annotate-undo")
    gr.Markdown(SHORTCUT_HELP, elem_id="annotate-help")

    # ---- wiring
    view = [session, image_list, image_info, overlay, editor, instances, message]
    state = [session, threshold]

    def refresh_dropdowns(event):
        return event.then(partial(navigation.concept_choices, studio), [project, concept], [concept]).then(
            partial(navigation.model_choices, studio), [project, model], [model])

    opened = project.change(ordered(partial(navigation.open_project, studio)), [*state, project], view, **EDITS)
    refresh_dropdowns(opened.then(ordered(partial(memory.restore, studio)), [*state, remembered], [*view, threshold], **EDITS))
    session.change(memory.remember, [remembered, session, threshold], [remembered], queue=False, show_progress="hidden")
    threshold.change(memory.remember, [remembered, session, threshold], [remembered], queue=False, show_progress="hidden")
    if isinstance(tab, gr.Tab):
        entered = tab.select(ordered(partial(navigation.refresh_tab, studio)), [*state, project], view, **EDITS)
        # the remembered place is read again on entering the tab: the browser may fill the BrowserState
        # only after the project's first opening (it did in Chromium: the tab is drawn on first entry)
        refresh_dropdowns(entered.then(ordered(partial(memory.restore, studio)), [*state, remembered], [*view, threshold],
                                       **EDITS))
    concept.change(ordered(partial(navigation.pick_concept, studio)), [session, concept], [session, find_all_button], **EDITS)
    image_list.input(ordered(partial(navigation.open_image, studio)), [*state, image_list], view, **EDITS)
    if open_request is not None:
        open_button, selected_image = open_request
        open_button.click(ordered(partial(navigation.open_image, studio)), [*state, selected_image], view, **EDITS)
    prev_button.click(ordered(partial(navigation.step_image, studio, step=-1)), state, view, **EDITS)
    next_button.click(ordered(partial(navigation.step_image, studio, step=1)), state, view, **EDITS)
    status_filter.change(ordered(partial(navigation.set_status_filter, studio)), [*state, status_filter], view, **EDITS)

    find_all_button.click(ordered(partial(proposals.find_all, studio)), [*state, model, concept], view, **EDITS)
    # input: a slider drag and a number typed into its box alike (release missed the box); while one
    # runs only the latest value waits
    threshold.input(ordered(partial(proposals.change_threshold, studio)), state, view, trigger_mode="always_last", **EDITS)
    clear_clicks_button.click(ordered(partial(proposals.clear_clicks, studio)), state, view, **EDITS)
    other_mask_button.click(ordered(partial(proposals.other_candidate, studio)), [*state, model, concept], view, **EDITS)

    def on_overlay_click(session_value, threshold_value, mode_value, model_value, concept_value, event: gr.SelectData):
        x, y = event.index
        return proposals.overlay_click(studio, session_value, threshold_value, mode_value, model_value, concept_value, x, y)

    overlay.select(ordered(on_overlay_click), [*state, mode, model, concept], view, **EDITS)

    def on_row_click(session_value, threshold_value, event: gr.SelectData):
        return edits.select_row(studio, session_value, threshold_value, event.row_value)

    instances.select(ordered(on_row_click), state, view, **EDITS)
    instances.change(None, js=SCROLL_TO_SELECTED_JS, queue=False)  # browser only: the selected row into view
    new_button.click(ordered(partial(edits.new_instance, studio)), state, view, **EDITS)
    save_button.click(ordered(partial(edits.save_mask, studio)), [*state, editor, concept], view, **EDITS)
    reload_button.click(ordered(partial(edits.reload, studio)), state, view, **EDITS)
    accept_button.click(ordered(partial(edits.accept, studio)), [*state, editor], view, **EDITS)
    reject_button.click(ordered(partial(edits.reject, studio)), state, view, **EDITS)
    delete_button.click(ordered(partial(edits.delete, studio)), state, view, **EDITS)
    relabel_button.click(ordered(partial(edits.relabel, studio)), [*state, editor, concept], view, **EDITS)
    undo_button.click(ordered(partial(undo, studio)), state, view, **EDITS)
    demo.load(None, js=SHORTCUTS_JS)
    return model
