"""Layout of the "Train" tab: builds the components and wires them to app.ui.train_handlers
(bound to the studio with functools.partial). No logic here.

The Advanced accordion has one field per TrainConfig key, generated from
app.ui.train_form.field_specs(); keys the worker sets are shown read-only with the reason.
"""
from __future__ import annotations

from functools import partial
from itertools import groupby

import gradio as gr

from app.jobs.recipe import DEFAULT_PRESET, PRESET_NAMES, WORKER_KEYS, preset_values
from app.studio import Studio
from app.ui import prelabel_handlers as prelabel
from app.ui import train_handlers as handlers
from app.ui.curves import CURVE_TERMS, SERIES_COLOURS, TERM_LABELS, curve_frame
from app.ui.train_form import FieldSpec, display_value, field_specs
from app.ui.train_jobs import JOB_HEADERS


def _field(spec: FieldSpec, value) -> gr.components.Component:
    """The form field of one config key: number, checkbox, dropdown or text."""
    common = {"label": spec.key, "info": spec.help, "elem_id": f"train-field-{spec.key.replace('.', '-')}",
              "min_width": 200}
    if not spec.editable:
        return gr.Textbox(value=f"set by the worker: {WORKER_KEYS[spec.key]}", interactive=False,
                          **{**common, "label": f"{spec.key} (not editable)"})
    value = display_value(spec, value)
    if spec.kind in ("int", "float") and not spec.as_text:
        return gr.Number(value=value, precision=0 if spec.kind == "int" else None, **common)
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if spec.kind == "choice":
        return gr.Dropdown(choices=list(spec.choices), value=value, **common)
    return gr.Textbox(value=value, placeholder="empty = not set" if spec.optional else None, **common)


def _section(spec: FieldSpec) -> str:
    return spec.key.rsplit(".", 1)[0] if "." in spec.key else "run"


def _advanced_fields() -> list[gr.components.Component]:
    """All fields, one row per config section; returns the editable ones in editable_specs order."""
    values = preset_values(DEFAULT_PRESET)
    editable = []
    for section, specs in groupby(field_specs(), key=_section):
        gr.Markdown(f"**{section}**")
        with gr.Row():
            for spec in specs:
                component = _field(spec, values.get(spec.key))
                if spec.editable:
                    editable.append(component)
    return editable


def build_train_tab(studio: Studio, demo: gr.Blocks, project: gr.Dropdown) -> None:
    """Build the tab inside the current gr.Tab; `project` is the Projects & Data tab's project dropdown."""
    tab = gr.context.Context.block  # the enclosing gr.Tab: entering it refreshes what changed elsewhere
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            gr.Markdown("### Dataset")
            summary = gr.Markdown("Choose a project in Projects & Data.", elem_id="train-summary")
            refresh_button = gr.Button("Refresh summary", size="sm", elem_id="train-refresh")
        with gr.Column(scale=3, min_width=420):
            gr.Markdown("### Fine-tune")
            preset = gr.Radio(list(PRESET_NAMES), value=DEFAULT_PRESET, label="Preset", elem_id="train-preset",
                              info="Quick: decoder LoRA, 40 steps · Balanced: 10 epochs · Thorough: full LoRA, 20 epochs")
            with gr.Accordion("Advanced: every training setting", open=False, elem_id="train-advanced"):
                fields = _advanced_fields()
            with gr.Row():
                start_button = gr.Button("Fine-tune", variant="primary", interactive=False, elem_id="train-start")
                cancel_button = gr.Button("Cancel job", variant="stop", interactive=False, elem_id="train-cancel")
            message = gr.Markdown(elem_id="train-message")

    with gr.Accordion("Pre-label: propose for every unlabelled image", open=False, elem_id="prelabel"):
        with gr.Row():
            prelabel_model = gr.Dropdown(label="Model", choices=[], value=None, elem_id="prelabel-model", scale=2)
            prelabel_split = gr.Radio(list(prelabel.SPLITS), value="all", label="Split", elem_id="prelabel-split")
            prelabel_concepts = gr.CheckboxGroup([], label="Concepts (none = all)", elem_id="prelabel-concepts")
        with gr.Row():
            prelabel_replace = gr.Checkbox(True, label="Also re-propose images whose proposals are not reviewed yet",
                                           elem_id="prelabel-replace")
            prelabel_threshold = gr.Number(prelabel.DEFAULT_THRESHOLD, minimum=0, maximum=1, step=0.05,
                                           label="Keep proposals scoring at least", elem_id="prelabel-threshold")
            prelabel_after = gr.Radio(list(prelabel.AFTER_FINETUNE), value="ask", label="After a fine-tune",
                                      elem_id="prelabel-after")
        prelabel_counts = gr.Markdown(elem_id="prelabel-counts")
        prelabel_start = gr.Button("Propose for unlabelled images", variant="primary", elem_id="prelabel-start")

    gr.Markdown("### Jobs")
    with gr.Row():
        job_choice = gr.Dropdown(label="Show job", choices=[], value=None, scale=1, elem_id="train-job")
        with gr.Column(scale=3):
            progress = gr.HTML(elem_id="train-progress")
            outcome = gr.Markdown(elem_id="train-outcome")
    jobs = gr.Dataframe(headers=JOB_HEADERS, value=[], interactive=False, max_height=220, elem_id="train-jobs")
    terms = gr.CheckboxGroup([(TERM_LABELS[term], term) for term in CURVE_TERMS], value=list(CURVE_TERMS),
                             label="Loss terms (unweighted; total = weighted sum)", elem_id="train-curve-terms")
    curve = gr.LinePlot(curve_frame(None), x="step", y="value", color="series", color_map=SERIES_COLOURS,
                        label="Loss: train (dark), val (light)", x_title="step", y_title="log10 loss", color_title="",
                        elem_id="train-curve")
    view = gr.State(None)
    timer = gr.Timer(1.0, active=False)

    # ---- wiring
    view_outputs = [jobs, job_choice, progress, outcome, curve, view, start_button, cancel_button, timer]
    show = partial(handlers.show_project, studio)
    demo.load(show, [project, view, terms], [summary, message, *view_outputs])
    project.change(show, [project, view, terms], [summary, message, *view_outputs])
    refresh_button.click(partial(handlers.refresh_summary, studio), [project], [summary])
    if isinstance(tab, gr.Tab):
        tab.select(partial(handlers.enter_tab, studio), [project, job_choice, view, terms], [summary, *view_outputs])
    preset.input(handlers.choose_preset, [preset], fields)
    start_button.click(
        partial(handlers.start_finetune, studio), [project, preset, view, terms, *fields], [message, *view_outputs]
    ).then(partial(handlers.refresh_summary, studio), [project], [summary])
    cancel_button.click(partial(handlers.cancel_job, studio), [project, job_choice, view, terms], [message, *view_outputs])
    job_choice.input(partial(handlers.pick_job, studio), [project, job_choice, view, terms], view_outputs)
    terms.input(handlers.pick_terms, [view, terms], [curve])
    prelabel_outputs = [prelabel_model, prelabel_concepts, prelabel_after, prelabel_counts]
    form = partial(prelabel.prelabel_form, studio)
    demo.load(form, [project], prelabel_outputs)
    project.change(form, [project], prelabel_outputs)
    if isinstance(tab, gr.Tab):
        tab.select(form, [project], prelabel_outputs)
    prelabel_start.click(
        partial(prelabel.start_prelabel, studio),
        [project, prelabel_model, prelabel_split, prelabel_concepts, prelabel_replace, prelabel_threshold, view, terms],
        [message, *view_outputs])
    prelabel_after.input(partial(prelabel.set_after_finetune, studio), [project, prelabel_after], [message])
    timer.tick(partial(handlers.tick, studio), [project, job_choice, view, terms], view_outputs,
               show_progress="hidden", queue=False)
