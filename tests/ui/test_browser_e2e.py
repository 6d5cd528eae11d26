"""The studio end to end in real headless Chromium (Debian's `chromium`, driven by
Playwright) against `sam3-studio` with its embedded worker, the tiny SAM3 and a
synthetic COCO dataset:

create a project -> import a COCO zip -> Find all -> brush a stroke onto one mask ->
save -> reload the page and find the saved mask again -> fine-tune -> the loss curve
gains points while the job runs -> download the adapter zip -> load it with
PeftModel.from_pretrained.

A screenshot of each tab goes to $SCREENSHOT_DIR (default: the test's temp folder);
`SCREENSHOT_DIR=docs/screenshots make test PYTEST_ARGS=tests/ui/test_browser_e2e.py`
refreshes the README's pictures.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from peft import PeftModel
from playwright.sync_api import Page, sync_playwright
from pycocotools import mask as coco_mask
from transformers import Sam3Model

from sam3_lora.synthetic import write_synthetic_coco
from tests.ui import browser_waits
from tests.ui.browser_waits import wait_drawn, wait_no_progress
from tests.ui.studio_process import start_studio, stop
from tests.waiting import work_deadline_s

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
EDITOR_CANVAS = "#annotate-editor canvas"
WAIT_MS = int(work_deadline_s(start_s=30) * 1000)  # model loads, a cold worker, two shared cores
JOB_STEPS = 40
# the fine-tune: a worker start, an evaluation before and after, and JOB_STEPS steps (~0.5 s each on
# an idle 2-core machine, ~5 s with two CPU burners beside the suite)
JOB_WAIT_S = work_deadline_s(start_s=30, units=JOB_STEPS, per_unit_s=1.5)
# the whole test: the fine-tune's wait plus the waits of the steps around it; the suite's 300 s
# stopped it mid fine-tune with two CPU burners beside the suite (it takes ~80 s on an idle machine)
pytestmark = pytest.mark.timeout(int(JOB_WAIT_S + 4 * WAIT_MS / 1000))


@pytest.fixture
def shapes_zip(tmp_path) -> Path:
    """A COCO zip (annotations.json + images/) of 8 synthetic 112 px images of circles and squares."""
    json_path = write_synthetic_coco(tmp_path / "synthetic", num_images=8, image_size=112,
                                     concepts=("circle", "square"), max_instances=2, seed=3)
    archive = tmp_path / "shapes.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(json_path, "annotations.json")
        for image in sorted((json_path.parent / "images").iterdir()):
            bundle.write(image, f"images/{image.name}")
    return archive


@pytest.fixture
def studio_url(tmp_path, tiny_model_dir):
    process, url = start_studio(tmp_path, worker=True, SAM3_MODEL=str(tiny_model_dir), PYTHONFAULTHANDLER="1")
    yield url
    assert process.poll() is None, f"sam3-studio exited with {process.returncode} during the test"
    stop(process)


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(request, shots, studio_url):  # studio_url first: the server outlives the failure screenshot
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        yield page
        if request.node.rep_call.failed:  # what the page showed and logged when the test failed
            page.screenshot(path=str(shots / "failure.png"), full_page=True)
            print("browser console:", *console[-40:], sep="\n  ")
        browser.close()


def text_of(page: Page, selector: str) -> str:
    return page.locator(selector).inner_text()


def wait_text(page: Page, selector: str, needle: str, timeout_ms: int = WAIT_MS) -> str:
    return browser_waits.wait_text(page, selector, needle, timeout_ms)


def wait_idle(page: Page, selector: str) -> None:
    """Wait until the component shows no progress overlay, then give its canvas a moment to draw."""
    wait_no_progress(page, selector, WAIT_MS)
    page.wait_for_timeout(1500)


def open_tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def fill_number(page: Page, selector: str, value: str) -> None:
    box = page.locator(f"{selector} input[type=number], {selector} input, {selector} textarea").first
    box.fill(value)
    box.press("Enter")


def human_annotations(data_dir: Path) -> list[tuple[int, int, dict]]:
    """(id, revision, rle) of live human-source annotations, straight from the SQLite file."""
    with sqlite3.connect(data_dir / "studio.db") as db:
        rows = db.execute("SELECT id, revision, rle FROM annotation WHERE source = 'human' AND deleted = 0").fetchall()
    return [(row_id, revision, json.loads(rle)) for row_id, revision, rle in rows]


def best_proposal(data_dir: Path) -> np.ndarray:
    """Mask of the highest-scoring live model proposal, uint8 [H, W]."""
    with sqlite3.connect(data_dir / "studio.db") as db:
        (rle,) = db.execute("SELECT rle FROM annotation WHERE source = 'model' AND deleted = 0 "
                            "ORDER BY score DESC LIMIT 1").fetchone()
    return coco_mask.decode(json.loads(rle))


def curve_point_count(page: Page) -> int:
    """Points drawn in the loss plot (vega marks), 0 while it is empty."""
    return page.evaluate(
        "() => { const plot = document.querySelector('#train-curve');"
        " if (!plot) return 0; const view = plot.querySelector('.vega-embed');"
        " const marks = plot.querySelectorAll('path.mark-line, g.mark-symbol path, g.mark-line path');"
        " return marks.length; }")


def test_label_train_download_in_a_real_browser(page, studio_url, shapes_zip, shots, tmp_path, tiny_model_dir):
    data_dir = tmp_path / "data"
    page.goto(studio_url)

    # ---- Projects & Data: create, import
    name_box = page.locator("#data-new-project textarea, #data-new-project input").first
    name_box.fill("Shapes")
    name_box.press("Enter")
    wait_text(page, "#data-project-status", "created project shapes")
    page.get_by_role("tab", name="Import dataset").click()
    page.locator("#data-coco-files input[type=file]").set_input_files(str(shapes_zip))
    page.wait_for_timeout(1000)
    page.locator("#data-import").click()
    report = wait_text(page, "#data-import-report", "imported")
    assert "8 added" in report, report
    page.wait_for_function("() => document.querySelectorAll('#studio-gallery img').length >= 8", timeout=WAIT_MS)
    page.screenshot(path=str(shots / "projects-data.png"))

    # ---- Annotate: find all, brush, save
    open_tab(page, "Annotate")
    page.wait_for_function("() => !document.querySelector('#annotate-image-info').innerText.includes('No image open')",
                           timeout=WAIT_MS)
    fill_number(page, "#annotate-threshold", "0")
    wait_no_progress(page, "#annotate-editor", WAIT_MS)
    opened = wait_drawn(page, EDITOR_CANVAS, WAIT_MS)  # the opened image, as the user sees it before Find all
    before = {row_id: (revision, rle) for row_id, revision, rle in human_annotations(data_dir)}
    page.locator("#annotate-find-all").click()
    wait_text(page, "#annotate-message", "proposal")
    page.wait_for_function("() => document.querySelectorAll('#annotate-instances tbody tr').length >= 1", timeout=WAIT_MS)
    wait_no_progress(page, "#annotate-editor", WAIT_MS)
    proposal = best_proposal(data_dir)  # Find all selects the best proposal and loads it into the editor
    # the editor draws the selected instance's layer after the table; a stroke painted before it
    # has drawn lands on nothing
    wait_drawn(page, EDITOR_CANVAS, WAIT_MS, unlike=opened)
    # erase across a mask that covers the middle of the image, paint across one that does not
    tool = "Erase" if proposal[proposal.shape[0] // 2].mean() > 0.5 else "Brush"
    page.locator("#annotate-editor").get_by_role("button", name=tool, exact=True).click()
    canvas = page.locator(EDITOR_CANVAS).first
    box = canvas.bounding_box()
    assert box and box["width"] > 50, box
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    for step in range(1, 21):
        page.mouse.move(box["x"] + box["width"] * (0.2 + 0.03 * step), box["y"] + box["height"] * 0.5, steps=2)
    page.mouse.up()
    page.locator("#annotate-save-mask").click()
    saved_message = wait_text(page, "#annotate-message", "saved")
    after = {row_id: (revision, rle) for row_id, revision, rle in human_annotations(data_dir)}
    changed = [row_id for row_id in after if before.get(row_id) != after[row_id]]
    assert len(changed) == 1, (saved_message, before.keys(), after.keys())
    saved_id = changed[0]
    saved_mask = coco_mask.decode(after[saved_id][1])
    if tool == "Erase":
        assert saved_mask.sum() < proposal.sum(), (tool, saved_mask.sum(), proposal.sum())
    else:
        assert saved_mask.sum() > proposal.sum(), (tool, saved_mask.sum(), proposal.sum())
    changed_rows = np.nonzero((saved_mask != proposal).any(axis=1))[0]
    assert abs(changed_rows.mean() - proposal.shape[0] / 2) < proposal.shape[0] / 8  # along the stroke

    # ---- reload: the saved mask is still there, in the database and in the page
    page.reload()
    open_tab(page, "Annotate")
    page.wait_for_function("() => !document.querySelector('#annotate-image-info').innerText.includes('No image open')",
                           timeout=WAIT_MS)
    revision, rle = {row_id: (rev, r) for row_id, rev, r in human_annotations(data_dir)}[saved_id]
    assert np.array_equal(coco_mask.decode(rle), saved_mask) and revision == after[saved_id][0]
    page.wait_for_function(
        "(id) => [...document.querySelectorAll('#annotate-instances tbody tr')]"
        ".some(row => { const cells = [...row.querySelectorAll('td')].map(c => c.textContent.trim().toLowerCase());"
        " return cells.includes(String(id)) && cells.includes('reviewed'); })",
        arg=saved_id, timeout=WAIT_MS)
    # selecting its row loads it into the editor again
    page.locator("#annotate-instances").scroll_into_view_if_needed()  # the table draws its rows when in view
    page.locator("#annotate-instances").get_by_text(str(saved_id), exact=True).locator("visible=true").first.click()
    wait_text(page, "#annotate-message", f"#{saved_id}")
    page.wait_for_function("(id) => [...document.querySelectorAll('#annotate-instances *')].some(c => c.children.length "
                           "=== 0 && c.textContent.trim() === '▶ ' + id && getComputedStyle(c).fontWeight >= 600)",
                           arg=saved_id, timeout=WAIT_MS)  # the selected row is painted (bold), not only marked
    wait_idle(page, "#annotate-editor")
    page.screenshot(path=str(shots / "annotate.png"), full_page=True)

    # ---- Train: quick preset, few steps; the curve grows while the job runs
    open_tab(page, "Train")
    page.get_by_role("button", name="Advanced: every training setting").click()
    fill_number(page, "#train-field-schedule-max_steps", str(JOB_STEPS))
    fill_number(page, "#train-field-log_every", "1")
    page.wait_for_function("() => !document.querySelector('#train-start').disabled", timeout=WAIT_MS)
    page.locator("#train-start").click()
    wait_text(page, "#train-message", "job")
    page.wait_for_function("() => document.querySelector('#train-start').disabled", timeout=WAIT_MS)
    counts = []
    deadline = time.monotonic() + JOB_WAIT_S
    while time.monotonic() < deadline and "succeeded" not in text_of(page, "#train-jobs").lower():
        counts.append(curve_point_count(page))
        page.wait_for_timeout(500)
    assert "succeeded" in text_of(page, "#train-jobs").lower(), text_of(page, "#train-jobs")
    growing = [c for c in counts if c > 0]
    print("curve marks while the job ran:", counts)
    assert len(set(growing)) >= 2 and growing == sorted(growing), counts
    outcome = wait_text(page, "#train-outcome", "map")
    page.screenshot(path=str(shots / "train.png"), full_page=True)

    # ---- Models: download the zip and load it with PEFT
    open_tab(page, "Models")
    page.wait_for_function("() => document.querySelector('#models-list tbody tr')", timeout=WAIT_MS)
    page.locator("#models-choice input").first.click()
    page.get_by_role("option").first.click()
    page.wait_for_function("() => !document.querySelector('#models-download button, #models-download').disabled",
                           timeout=WAIT_MS)
    with page.expect_download(timeout=WAIT_MS) as download_info:
        page.locator("#models-download").click()
    archive = tmp_path / "adapter.zip"
    download_info.value.save_as(archive)
    page.screenshot(path=str(shots / "models.png"), full_page=True)
    unpacked = tmp_path / "adapter"
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(unpacked)
    folder = next(path.parent for path in unpacked.rglob("adapter_config.json"))
    assert (folder / "README.md").is_file()
    model = PeftModel.from_pretrained(Sam3Model.from_pretrained(tiny_model_dir), folder)
    assert any(".lora_B." in name and parameter.abs().sum() > 0 for name, parameter in model.named_parameters())
    assert all(word in outcome for word in ("before", "after", "segm", "bbox")), outcome
