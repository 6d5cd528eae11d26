"""Pre-label in real headless Chromium against `sam3-studio` with its embedded worker and the tiny
SAM3 (issue 17): a project of unlabelled synthetic images (made through the store before the
studio starts) -> Train tab, Pre-label: propose for every image -> the progress bar counts images
and the job succeeds -> Annotate, "least certain first": the head of the review queue opens, and
the keyboard (a: accept, n: next) walks the queue in its order.
"""
from __future__ import annotations

import shutil
import sqlite3

import pytest
from playwright.sync_api import sync_playwright

from app.settings import Settings
from app.store.db import make_engine
from app.store.migrate import upgrade_database
from app.store.projects import add_concept, create_project
from app.store.review_queue import review_queue
from app.store.uploads import ingest_files
from sam3_lora.synthetic import write_synthetic_coco
from tests.ui import browser_waits
from tests.ui.browser_waits import wait_no_progress
from tests.ui.studio_process import start_studio, stop
from tests.waiting import work_deadline_s

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = int(work_deadline_s(start_s=30) * 1000)  # model loads, a cold worker, a pre-label job of a few images
NUM_IMAGES = 6
REVIEW_THRESHOLD = 0.5  # the Annotate slider's default


@pytest.fixture
def studio_url(tmp_path, tiny_model_dir):
    settings = Settings(DATA_DIR=tmp_path / "data")
    settings.media_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    project = create_project(engine, "Shapes")
    for name in ("circle", "square"):
        add_concept(engine, project.id, name)
    coco = write_synthetic_coco(tmp_path / "synthetic", num_images=NUM_IMAGES, image_size=112, seed=4)
    files = sorted((coco.parent / "images").iterdir())
    assert len(ingest_files(engine, settings.media_dir, project.id, files, max_bytes=10 << 20).accepted) == NUM_IMAGES
    engine.dispose()
    process, url = start_studio(tmp_path, worker=True, SAM3_MODEL=str(tiny_model_dir))
    yield url
    assert process.poll() is None, f"sam3-studio exited with {process.returncode} during the test"
    stop(process)


def wait_text(page, selector: str, needle: str) -> str:
    return browser_waits.wait_text(page, selector, needle, WAIT_MS)


def wait_idle(page, selector: str) -> None:
    """Let an event start, then wait until the component shows no progress overlay."""
    page.wait_for_timeout(500)
    wait_no_progress(page, selector, WAIT_MS)


def test_prelabel_job_progress_and_review_queue_in_a_real_browser(studio_url, tmp_path):
    data_dir = tmp_path / "data"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        try:
            page.goto(studio_url)
            page.get_by_role("tab", name="Train", exact=True).click()
            page.get_by_text("Pre-label: propose for every unlabelled image").click()
            wait_text(page, "#prelabel-counts", f"{NUM_IMAGES} unlabelled")
            threshold = page.locator("#prelabel-threshold input").first
            threshold.fill("0")  # the tiny random SAM3 scores ~0.26: keep everything
            threshold.press("Enter")
            page.locator("#prelabel-start").click()
            wait_text(page, "#train-message", "pre-label job")
            progress = wait_text(page, "#train-progress", "image")  # the bar counts images, not steps
            wait_text(page, "#train-jobs", "succeeded")
            final = wait_text(page, "#train-progress", f"image {NUM_IMAGES} / {NUM_IMAGES}")
            print("progress seen:", progress, "->", final)
            wait_text(page, "#train-outcome", "proposal(s) on")

            engine = make_engine(f"sqlite:///{data_dir / 'studio.db'}")
            queue = [image_id for image_id, _ in review_queue(engine, 1, REVIEW_THRESHOLD)]
            engine.dispose()
            assert len(queue) >= 2, queue
            with sqlite3.connect(data_dir / "studio.db") as db:
                names = dict(db.execute("SELECT id, original_name FROM image").fetchall())

            # one event at a time: a handler still running would write back the session it started from
            page.get_by_role("tab", name="Annotate", exact=True).click()
            page.wait_for_function("() => !document.querySelector('#annotate-image-info').innerText"
                                   ".includes('No image open')", timeout=WAIT_MS)
            wait_idle(page, "#annotate-message")  # the tab's refresh has landed
            page.locator("#annotate-status-filter").get_by_text("least certain first").click()
            wait_text(page, "#annotate-message", "least certain first")
            page.wait_for_function("(name) => document.querySelector('#annotate-image input').value.startsWith(name)",
                                   arg=names[queue[0]], timeout=WAIT_MS)
            wait_idle(page, "#annotate-editor")  # the selected proposal (the least certain) is in the editor
            page.locator("body").press("a")  # keyboard: accept it (the image is reviewed and leaves the queue)
            wait_text(page, "#annotate-message", "accepted")
            page.locator("body").press("n")  # keyboard: next in the queue
            page.wait_for_function("(name) => document.querySelector('#annotate-image input').value.startsWith(name)",
                                   arg=names[queue[1]], timeout=WAIT_MS)
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
