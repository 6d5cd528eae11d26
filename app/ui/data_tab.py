"""Layout of the "Projects & Data" tab: builds the components and wires them to
app.ui.data_handlers (bound to the studio with functools.partial). No logic here."""
from __future__ import annotations

from functools import partial

import gradio as gr

from app.store.projects import IMAGE_SPLITS
from app.studio import Studio
from app.ui import data_handlers as handlers
from app.ui import data_io


def build_data_tab(studio: Studio, demo: gr.Blocks) -> tuple[gr.Dropdown, gr.Button, gr.State]:
    """Build the tab's contents inside the current gr.Tab (projects are listed again on
    every page load of `demo`, the gallery on entering the tab); returns the project dropdown,
    which other tabs listen to, the "Open in Annotate" button and the selected image id."""
    with gr.Row():
        project = gr.Dropdown(label="Project", choices=[], value=None, scale=3, interactive=True, elem_id="data-project")
        new_project_name = gr.Textbox(
            label="New project", placeholder="e.g. Road cracks", submit_btn="Create", scale=2, elem_id="data-new-project"
        )
    project_status = gr.Markdown(elem_id="data-project-status")

    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            gr.Markdown("### Concepts")
            concept_table = gr.Dataframe(
                headers=["Concept", "Colour"], datatype=["str", "html"], value=[], interactive=False,
                column_widths=["60%", "40%"], max_height=260,
            )
            new_concept_name = gr.Textbox(
                label="New concept (a noun phrase the model is prompted with)", placeholder="e.g. crack",
                submit_btn="Add",
            )
            with gr.Row():
                concept_choice = gr.Dropdown(label="Edit concept", choices=[], value=None, scale=2, min_width=120)
                concept_name = gr.Textbox(label="Name", scale=2, min_width=120)
                concept_color = gr.ColorPicker(label="Colour", value=handlers.NO_CONCEPT_COLOR, scale=1, min_width=70)
            with gr.Row():
                rename_button = gr.Button("Save name / colour", size="sm")
                delete_button = gr.Button("Delete", variant="stop", size="sm")
            concept_status = gr.Markdown()
            pending_delete = gr.State(None)

        with gr.Column(scale=3, min_width=420):
            with gr.Tabs():
                with gr.Tab("Upload images"):
                    upload_files = gr.File(
                        label="Images (PNG, JPEG, WebP, BMP, TIFF) or .zip archives of them",
                        file_count="multiple", type="filepath", height=140, elem_id="data-upload-files",
                    )
                    upload_button = gr.Button("Add to project", variant="primary", elem_id="data-upload")
                    upload_report = gr.Markdown(elem_id="data-upload-report")
                with gr.Tab("Import dataset"):
                    import_format = gr.Radio(list(data_io.IMPORT_FORMATS), value="COCO", label="Format",
                                             elem_id="data-import-format")
                    gr.Markdown("COCO: one .json plus its images, or one .zip holding both. YOLO-seg: one .zip "
                                "with data.yaml, images/ and labels/. PNG masks: one .zip with labelmap.txt, "
                                "SegmentationClass/ (and SegmentationObject/) and the images.")
                    coco_files = gr.File(
                        label="Dataset files", file_count="multiple", type="filepath", height=140,
                        elem_id="data-coco-files",
                    )
                    import_button = gr.Button("Import", variant="primary", elem_id="data-import")
                    import_report = gr.Markdown(elem_id="data-import-report")
                with gr.Tab("Export"):
                    gr.Markdown("Everything reviewed in this project (drawn, accepted or imported), as a zip.")
                    include_proposals = gr.Checkbox(
                        label="Include unreviewed proposals (COCO only, marked source 'model' with their score)",
                        value=False,
                    )
                    with gr.Row():
                        export_buttons = [gr.Button(f"{name} zip") for name in data_io.EXPORTERS]
                    export_file = gr.File(label="Download", interactive=False)
                    export_status = gr.Markdown()

    gr.Markdown("### Images")
    with gr.Row():
        status_filter = gr.Radio(
            list(handlers.STATUS_FILTERS), value=handlers.ALL_STATUSES, label="Show", scale=2
        )
        with gr.Column(scale=2):
            page_label = gr.Markdown("No project chosen.", elem_id="studio-page-label")
            with gr.Row():
                prev_button = gr.Button("◀ Previous", size="sm")
                next_button = gr.Button("Next ▶", size="sm")
    page = gr.State(1)
    first_page = gr.State(1)
    page_ids = gr.State([])
    gallery = gr.Gallery(
        label="Images", show_label=False, columns=8, fit_columns=False, object_fit="cover", allow_preview=True,
        elem_id="studio-gallery",
    )
    with gr.Row():
        selected_image = gr.State(None)
        selected_text = gr.Markdown()
        split_choice = gr.Radio(list(IMAGE_SPLITS), label="Split", scale=1)
        split_button = gr.Button("Set split", size="sm", scale=1)
        open_button = gr.Button("Open in Annotate", size="sm", scale=1, elem_id="data-open-in-annotate")

    # ---- wiring
    gallery_outputs = [gallery, page_ids, page_label, page]
    show_gallery = partial(handlers.gallery_page, studio)

    def refresh_gallery(event):
        return event.then(show_gallery, [project, status_filter, page], gallery_outputs)

    # one at a time, in arrival order: a page-load listing that read the database before a project was
    # created must not land after the creation and clear the dropdown (seen on a loaded 2-core machine)
    projects_in_order = {"concurrency_id": "project-dropdown", "concurrency_limit": 1}
    demo.load(partial(handlers.refresh_projects, studio), [project], [project], **projects_in_order)
    tab = gr.context.Context.block  # the enclosing gr.Tab: entering it shows counts changed in Annotate
    if isinstance(tab, gr.Tab):
        tab.select(show_gallery, [project, status_filter, page], gallery_outputs)
    new_project_name.submit(
        partial(handlers.create_project, studio), [new_project_name], [project, new_project_name, project_status],
        **projects_in_order,
    )
    selection_outputs = [selected_image, selected_text, split_choice]
    project.change(partial(handlers.concept_rows, studio), [project], [concept_table]).then(
        partial(handlers.concept_dropdown, studio), [project], [concept_choice]
    ).then(show_gallery, [project, status_filter, first_page], gallery_outputs).then(
        partial(handlers.select_image, studio, [], None), None, selection_outputs  # nothing selected
    )

    new_concept_name.submit(
        partial(handlers.add_concept, studio), [project, new_concept_name],
        [concept_table, concept_choice, new_concept_name, concept_status],
    )
    concept_choice.change(partial(handlers.pick_concept, studio), [project, concept_choice], [concept_name, concept_color])
    concept_choice.change(lambda: None, None, [pending_delete])  # a new choice disarms a first Delete click
    rename_button.click(
        partial(handlers.rename_concept, studio), [project, concept_choice, concept_name, concept_color],
        [concept_table, concept_choice, concept_status],
    )
    refresh_gallery(delete_button.click(  # annotation counts change with the concept
        partial(handlers.delete_concept, studio), [project, concept_choice, pending_delete],
        [concept_table, concept_choice, concept_status, pending_delete],
    ))

    refresh_gallery(upload_button.click(partial(data_io.upload_images, studio), [project, upload_files], [upload_report]))
    refresh_gallery(
        import_button.click(partial(data_io.import_dataset, studio), [project, coco_files, import_format],
                            [import_report])
    ).then(partial(handlers.concept_rows, studio), [project], [concept_table]).then(
        partial(handlers.concept_dropdown, studio), [project], [concept_choice]
    )
    for button, export_format in zip(export_buttons, data_io.EXPORTERS):
        def export(project_id, with_proposals, export_format=export_format):
            return data_io.export_project(studio, project_id, export_format, with_proposals)

        button.click(export, [project, include_proposals], [export_file, export_status])

    status_filter.change(show_gallery, [project, status_filter, first_page], gallery_outputs)
    prev_button.click(partial(handlers.turn_page, studio, step=-1), [project, status_filter, page], gallery_outputs)
    next_button.click(partial(handlers.turn_page, studio, step=1), [project, status_filter, page], gallery_outputs)

    def on_select(ids: list[int], event: gr.SelectData):
        return handlers.select_image(studio, ids, event.index)

    gallery.select(on_select, [page_ids], selection_outputs)
    refresh_gallery(split_button.click(partial(handlers.set_split, studio), [selected_image, split_choice], [selected_text]))
    return project, open_button, selected_image
