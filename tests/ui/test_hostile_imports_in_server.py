"""Hostile files through the running studio (a real `sam3-studio` process and Chromium):
the 206-byte polygon bomb, an overflowing bbox, a NUL category name, a bad iscrowd, an
HTML file name each get their message in the page, the process keeps
serving, and its peak memory barely moves (issue 13)."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.data.make_corpus import RECT
from tests.ui.studio_process import start_studio, stop
from tests.ui.test_browser_e2e import CHROMIUM, wait_text

CORPUS = Path(__file__).resolve().parents[1] / "data"
HTML_NAME = "<img src=x onerror=alert(1)>.png"


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process has ever had, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


@pytest.fixture
def studio(tmp_path):
    process, url = start_studio(tmp_path)
    yield process, url
    stop(process)


def import_files(page: Page, files: list[Path], needle: str) -> str:
    page.locator("#data-coco-files input[type=file]").set_input_files([str(f) for f in files])
    page.wait_for_timeout(800)
    page.locator("#data-import").click()
    report = wait_text(page, "#data-import-report", needle)
    page.locator("#data-coco-files button[aria-label='Clear']").first.click()
    return report


def hostile_files(folder: Path) -> dict[str, list[Path]]:
    """Each case: a COCO json and the image it names."""
    folder.mkdir()
    image = folder / "a.png"
    shutil.copyfile(CORPUS / "hostile" / "a.png", image)
    base = {"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
            "categories": [{"id": 1, "name": "thing"}]}
    cases = {
        "overflow": dict(base, annotations=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1e308] * 4},
                                            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3]}]),
        "nul": dict(base, categories=[{"id": 1, "name": "bad\u0000name"}, {"id": 2, "name": "fine"}],
                    annotations=[{"id": 1, "image_id": 1, "category_id": 2, "bbox": [5, 5, 2, 2]}]),
        "iscrowd": dict(base, annotations=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 5, 2, 2],
                                            "iscrowd": "maybe"}]),
    }
    files = {"bomb": [CORPUS / "hostile" / "polygon_bomb.json", image]}
    for name, document in cases.items():
        (folder / f"{name}.json").write_text(json.dumps(document))
        files[name] = [folder / f"{name}.json", image]
    # in a zip: the browser upload would strip '<', '>' and '=' from a file's own name
    with zipfile.ZipFile(folder / "html.zip", "w") as archive:
        archive.write(CORPUS / "label_studio" / "images" / "0f3c9a2e-scene.jpg", HTML_NAME)
        archive.writestr("html.json", json.dumps({
            "images": [{"id": 1, "file_name": HTML_NAME, "width": 48, "height": 32}],
            "categories": [{"id": 1, "name": "marker"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [RECT]}]}))
    files["html"] = [folder / "html.zip"]
    return files


def test_the_studio_survives_every_hostile_import_and_says_why(studio, tmp_path):
    process, url = studio
    files = hostile_files(tmp_path / "hostile")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(url)
        name_box = page.locator("#data-new-project textarea, #data-new-project input").first
        name_box.fill("Hostile")
        name_box.press("Enter")
        wait_text(page, "#data-project-status", "created project hostile")
        page.get_by_role("tab", name="Import dataset").click()
        before_mb = peak_rss_mb(process.pid)

        report = import_files(page, files["bomb"], "imported")
        assert "1 annotations imported" in report and "Clipped to their image" in report, report
        assert peak_rss_mb(process.pid) - before_mb < 200, "the polygon bomb must not eat memory"
        report = import_files(page, files["overflow"], "box covers no pixel of the image (zero area)")
        assert "1 annotations imported" in report, report
        report = import_files(page, files["nul"], "contains the control character U+0000 at position 3")
        assert "1 annotations imported" in report and "New concepts: fine." in report, report
        report = import_files(page, files["iscrowd"], "iscrowd 'maybe' is not 0, 1, true or false")
        assert "0 annotations imported" in report, report
        report = import_files(page, files["html"], "New concepts: marker")
        assert "1 annotations imported" in report, report

        page.get_by_role("tab", name="Annotate", exact=True).click()
        page.wait_for_function("() => !document.querySelector('#annotate-image-info').innerText.includes('No image open')",
                               timeout=60_000)
        wait_text(page, "#annotate-image-info", "a.png")  # the first image; the HTML-named one is next
        page.locator("#annotate-next").click()
        wait_text(page, "#annotate-image-info", HTML_NAME)
        assert page.locator("#annotate-image-info img").count() == 0, "the file name is text, not an element"
        assert dialogs == []
        browser.close()
    assert process.poll() is None, "the studio process is still running"
