"""Handlers of the "Projects & Data" tab that move data in and out: image uploads, dataset
imports (COCO, YOLO-seg, PNG masks) and exports. Plain functions of (studio, plain values)
like app.ui.data_handlers; long ones take a `progress` callable (gradio injects a
gr.Progress, tests pass any function of ((done, total), desc)).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr

from app.store import projects
from app.store.archive import open_source
from app.store.coco_export import export_coco
from app.store.coco_import import ImportReport, import_coco, import_coco_zip
from app.store.png_mask_export import export_png_masks
from app.store.png_mask_import import import_png_masks
from app.store.uploads import UploadReport, duplicate_reason, ingest_files, ingest_zip
from app.store.yolo_export import export_yolo_seg
from app.store.yolo_import import import_yolo_seg
from app.studio import Studio
from app.ui.data_handlers import code_span, listed, plural, require_project, studio_temp_root
from app.ui.messages import refusal

EXPORT_MAX_AGE_S = 3600  # gradio has copied a zip to its cache long before this
EXPORTERS: dict[str, tuple[Callable[..., Path], str]] = {
    "COCO": (export_coco, "coco"),
    "YOLO-seg": (export_yolo_seg, "yolo-seg"),
    "PNG masks": (export_png_masks, "png-masks"),
}
IMPORT_FORMATS = ("COCO", "YOLO-seg", "PNG masks")
Progress = Callable[..., Any]


def _reporter(progress: Progress, what: str) -> Callable[[int, int], None]:
    return lambda done, total: progress((done, total), desc=what)


def _is_zip(path: str) -> bool:
    return path.lower().endswith(".zip")


def _limits(studio: Studio) -> dict:
    return {"max_members": studio.settings.MAX_ZIP_MEMBERS}


# ---------------------------------------------------------------- uploads

def upload_images(studio: Studio, project_id: int | None, paths: Sequence[str] | None,
                  progress: Progress = gr.Progress()) -> str:
    """Ingest image files and zips (each member is one file of the upload). -> report markdown."""
    try:
        project_id = require_project(project_id)
        if not paths:
            raise ValueError("choose image files (or .zip archives of images) to upload first")
    except ValueError as error:
        return refusal("", error)
    max_bytes = studio.settings.max_upload_bytes
    files = [p for p in paths if not _is_zip(p)]
    report = ingest_files(studio.engine, studio.media_dir, project_id, files, max_bytes,
                          on_progress=_reporter(progress, "Adding images"))
    for zip_path in filter(_is_zip, paths):
        if report.stopped:
            report.not_tried.append(Path(zip_path).name)
            continue
        report.merge(ingest_zip(studio.engine, studio.media_dir, project_id, Path(zip_path), max_bytes,
                                zip_name=Path(zip_path).name, on_progress=_reporter(progress, Path(zip_path).name),
                                **_limits(studio)))
    return upload_report_markdown(report)


def upload_report_markdown(report: UploadReport) -> str:
    """'**3 added**, 1 already in the project, 1 refused.' then one bullet per refused / merged file."""
    lines = [
        f"**{len(report.accepted)} added**, {len(report.duplicates)} already in the project, "
        f"{len(report.refused)} refused."
    ]
    if report.stopped:
        lines += ["", f"**Stopped:** {report.stopped}.", "Not tried:",
                  *listed([f"- {code_span(name)}" for name in report.not_tried])]
    if report.refused:
        lines += ["", "Refused:", *listed([f"- {code_span(name)}: {reason}" for name, reason in report.refused])]
    if report.duplicates:
        lines += ["", "Same pixels as an image already stored (stored once):",
                  *listed([f"- {code_span(name)}: {duplicate_reason(name, other)}" for name, other in report.duplicates])]
    return "\n".join(lines)


# ---------------------------------------------------------------- imports

def _gather_images(image_paths: list[str]) -> Path:
    """A temp folder holding the uploaded images under their own names (gradio keeps each
    upload in its own folder); hard links where possible, copies otherwise."""
    folder = Path(tempfile.mkdtemp(prefix="coco-images-", dir=studio_temp_root()))
    for source in image_paths:
        target = folder / Path(source).name
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    return folder


def _import_coco(studio: Studio, project_id: int, paths: list[str], on_progress) -> ImportReport | str:
    zips = [p for p in paths if _is_zip(p)]
    jsons = [p for p in paths if p.lower().endswith(".json")]
    images = [p for p in paths if p not in zips and p not in jsons]
    max_bytes = studio.settings.max_upload_bytes
    if len(zips) == 1 and len(paths) == 1:
        return import_coco_zip(studio.engine, studio.media_dir, project_id, Path(zips[0]), max_bytes,
                               zip_name=Path(zips[0]).name, on_progress=on_progress, **_limits(studio))
    if len(jsons) == 1 and not zips:
        folder = _gather_images(images)
        try:
            return import_coco(studio.engine, studio.media_dir, project_id, Path(jsons[0]), folder, max_bytes,
                               on_progress=on_progress)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    got = ", ".join(Path(p).name for p in paths) or "nothing"
    return f"upload either one .zip holding a COCO .json and its images, or one .json plus its image files (got: {got})"


def _import_zip(studio: Studio, project_id: int, paths: list[str], importer, what: str, on_progress):
    if len(paths) != 1 or not _is_zip(paths[0]):
        got = ", ".join(Path(p).name for p in paths) or "nothing"
        return f"upload one .zip holding the {what} (got: {got})"
    try:
        source = open_source(Path(paths[0]), studio.settings.max_upload_bytes, **_limits(studio))
    except ValueError as error:
        return f"{Path(paths[0]).name}: {error}"
    with source:
        return importer(studio.engine, studio.media_dir, project_id, source, on_progress=on_progress)


def import_dataset(studio: Studio, project_id: int | None, paths: Sequence[str] | None, dataset_format: str = "COCO",
                   progress: Progress = gr.Progress()) -> str:
    """Import a COCO (one .zip, or one .json plus its images), YOLO-seg (one .zip with data.yaml)
    or PNG-mask (one .zip with labelmap.txt, SegmentationClass/ and the images) dataset.
    -> report markdown."""
    try:
        project_id = require_project(project_id)
        if dataset_format not in IMPORT_FORMATS:
            raise ValueError(f"unknown dataset format {dataset_format!r}; one of {', '.join(IMPORT_FORMATS)}")
    except ValueError as error:
        return refusal("", error)
    paths = list(paths or [])
    on_progress = _reporter(progress, f"Importing {dataset_format}")
    if dataset_format == "COCO":
        report = _import_coco(studio, project_id, paths, on_progress)
    elif dataset_format == "YOLO-seg":
        report = _import_zip(studio, project_id, paths, import_yolo_seg, "YOLO-seg dataset (data.yaml, images/, "
                             "labels/)", on_progress)
    else:
        report = _import_zip(studio, project_id, paths, import_png_masks, "PNG masks (labelmap.txt, "
                             "SegmentationClass/, the images)", on_progress)
    return refusal("", report) if isinstance(report, str) else import_report_markdown(report)


def import_report_markdown(report: ImportReport) -> str:
    """Totals, then the early stop, refused images, merged images, and skipped items grouped by reason."""
    images = report.images
    lines = [
        f"**{report.annotations_imported} annotations imported**; images: {len(images.accepted)} added, "
        f"{len(images.duplicates)} already in the project, {len(images.refused)} refused.",
    ]
    if report.concepts_created:
        lines.append(f"New concepts: {', '.join(code_span(name) for name in report.concepts_created)}.")
    if report.clipped:
        lines.append(f"Clipped to their image (they reached outside it): {plural(report.clipped, 'annotation')}.")
    if report.boxes_as_masks:
        lines.append(f"Stored as box-shaped masks (they had only a box): {plural(report.boxes_as_masks, 'annotation')}.")
    if report.turned:
        lines.append(f"Turned with their EXIF-rotated image: {plural(report.turned, 'annotation')}.")
    lines += [f"Note: {note}." for note in report.notes]
    if images.stopped:
        lines += ["", f"**Stopped:** {images.stopped}.", "Not tried:",
                  *listed([f"- {code_span(name)}" for name in images.not_tried])]
    if images.refused:
        lines += ["", "Refused images:", *listed([f"- {code_span(name)}: {reason}" for name, reason in images.refused])]
    merged = [(name, other) for name, other in images.duplicates if other and other != name]
    if merged:
        lines += ["", "Merged (same pixels, stored once; their annotations go onto that image):",
                  *listed([f"- {code_span(name)}: {duplicate_reason(name, other)}" for name, other in merged])]
    by_reason: dict[str, list[str]] = defaultdict(list)
    for item, reason in report.skipped:
        by_reason[reason].append(item)
    if by_reason:
        lines += ["", f"Skipped ({len(report.skipped)}):"]
        bullets = []
        for reason, items in by_reason.items():
            shown = ", ".join(code_span(item) for item in items[:10]) + (f" and {len(items) - 10} more" if len(items) > 10 else "")
            bullets.append(f"- {reason} ({len(items)}): {shown}" if len(items) > 1 else f"- {shown}: {reason}")
        lines += listed(bullets)
    return "\n".join(lines)


# ---------------------------------------------------------------- export

def _sweep_old_exports(root: Path) -> None:
    cutoff = time.time() - EXPORT_MAX_AGE_S
    for folder in root.glob("export-*"):
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # another session swept it first
            continue


def export_project(studio: Studio, project_id: int | None, export_format: str,
                   include_proposals: bool = False) -> tuple[str | None, str]:
    """Export the project in `export_format` (a key of EXPORTERS) and zip it in a fresh temp
    folder. Reviewed labels only, unless `include_proposals` (COCO: marked source "model"
    with their score). -> (zip path, its top folder being '<project>-<format>/', or None; status)."""
    try:
        project_id = require_project(project_id)
        if export_format not in EXPORTERS:
            raise ValueError(f"unknown export format {export_format!r}; one of {', '.join(EXPORTERS)}")
        if include_proposals and export_format != "COCO":
            raise ValueError(f"only a COCO export can mark unreviewed proposals; {export_format} takes reviewed "
                             "labels only (untick 'Include unreviewed proposals')")
        project = projects.get_project(studio.engine, project_id)
    except ValueError as error:
        return None, refusal("cannot export", error)
    exporter, suffix = EXPORTERS[export_format]
    root = studio_temp_root()
    _sweep_old_exports(root)
    work = Path(tempfile.mkdtemp(prefix="export-", dir=root))
    stem = f"{re.sub(r'[^A-Za-z0-9._-]+', '-', project.name).strip('-.') or 'project'}-{suffix}"
    extra = {"include_proposals": True} if include_proposals else {}
    exporter(studio.engine, studio.media_dir, project_id, work / stem, **extra)
    archive = shutil.make_archive(str(work / stem), "zip", root_dir=work, base_dir=stem)
    shutil.rmtree(work / stem)
    what = "reviewed labels and unreviewed proposals (marked source 'model')" if include_proposals \
        else "reviewed labels (drawn, accepted or imported; unreviewed proposals left out)"
    return archive, f"{export_format} export of {code_span(project.name)} is ready: {code_span(Path(archive).name)}, {what}."
