"""Annotate round trips before / after issue 16, in one run (imported by ui_bench.py).

"before" is the old code path, switched back on in this process: every render rebuilds
all outputs and re-encodes the editor background (annotate_view.FAST_PATHS = False), the
overlay is a PNG, and the tab's events share one global concurrency group of size 1
without the per-session lock, with the full progress overlay.

  server-side   handler + gradio's postprocess of its outputs (the PNG / JPEG encodes),
                per action: select, accept, save, next image; p95 of --repeats calls, ms
  chromium      headless Chromium against the app served in this process: click a row of
                the instance table -> the message names the selected instance (after a Clear
                clicks, so the message changes even with one row); p95, ms
  load          10 sessions press Find all at once (each on its own image), under each path's queue policy;
                p50 / p95 of their latencies, and one session alone, ms
"""
from __future__ import annotations

import contextlib
import re
import shutil
import socket
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np

from app.studio import Studio
from app.ui import annotate_edits, annotate_navigation, annotate_proposals, annotate_tab, annotate_view
from app.ui.annotate_view import VIEW_OUTPUTS, new_session

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


@contextlib.contextmanager
def old_code_path(enabled: bool) -> Iterator[None]:
    saved = (annotate_view.FAST_PATHS, annotate_tab.EDITS, annotate_tab.ordered, annotate_tab.OVERLAY_FORMAT)
    if enabled:
        annotate_view.FAST_PATHS = False
        annotate_tab.EDITS = {"concurrency_id": "annotate", "concurrency_limit": 1}
        annotate_tab.ordered = lambda handler: handler
        annotate_tab.OVERLAY_FORMAT = "png"
    try:
        yield
    finally:
        annotate_view.FAST_PATHS, annotate_tab.EDITS, annotate_tab.ordered, annotate_tab.OVERLAY_FORMAT = saved


def _components(demo) -> dict:
    return {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}


def _timed_with_postprocess(components: dict, handler: Callable, *args) -> tuple[float, dict]:
    """ms of handler(*args) + postprocess of the overlay, editor and table outputs it returns."""
    started = time.perf_counter()
    view = dict(zip(VIEW_OUTPUTS, handler(*args)))
    for name, elem_id in (("overlay", "annotate-overlay"), ("editor", "annotate-editor"), ("instances", "annotate-instances")):
        value = view[name]
        if isinstance(value, dict) and value.get("__type__") == "update":
            if "value" not in value:
                continue
            value = value["value"]
        components[elem_id].postprocess(value)
    return (time.perf_counter() - started) * 1000, view


def server_side(studio: Studio, project_id: int, concept_id: int, image_ids: list[int], repeats: int) -> dict[str, float]:
    """p95 ms per action (module docstring) for the code path in force."""
    from app.ui.layout import build_app

    components = _components(build_app(studio))
    threshold = 0.0
    session = dict(zip(VIEW_OUTPUTS, annotate_navigation.open_project(studio, new_session(), threshold, project_id)))["session"]
    times: dict[str, list[float]] = {"select": [], "accept": [], "save": [], "next image": []}
    for repeat in range(repeats):
        session = dict(zip(VIEW_OUTPUTS, annotate_proposals.find_all(studio, session, threshold, "base", concept_id)))["session"]
        view = dict(zip(VIEW_OUTPUTS, annotate_edits.select_instance(studio, session, threshold, session["selected"])))
        elapsed, view = _timed_with_postprocess(components, annotate_edits.select_instance, studio, view["session"],
                                                threshold, view["session"]["selected"])
        times["select"].append(elapsed)
        elapsed, view = _timed_with_postprocess(components, annotate_edits.accept, studio, view["session"], threshold, None)
        times["accept"].append(elapsed)
        editor = annotate_view.editor_for(studio, view["session"])
        value = dict(editor["value"])
        layer = np.array(value["layers"][0], copy=True)
        layer[100:140, 100:300, 3] = 255  # a brush stroke
        elapsed, view = _timed_with_postprocess(components, annotate_edits.save_mask, studio, view["session"], threshold,
                                                {**value, "background": None, "layers": [layer]}, concept_id)
        times["save"].append(elapsed)
        elapsed, view = _timed_with_postprocess(components, annotate_navigation.step_image, studio, view["session"],
                                                threshold, 1 if repeat % 2 == 0 else -1)
        times["next image"].append(elapsed)
        session = view["session"]
    return {name: p95(samples) for name, samples in times.items()}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(studio: Studio):
    """(demo, url): the studio's UI served from this process."""
    from app.ui.layout import build_app

    demo = build_app(studio)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    return demo, f"http://127.0.0.1:{port}"


def chromium_clicks(url: str, clicks: int) -> float:
    """p95 ms from a click on an instance-table row to the message naming that instance."""
    from playwright.sync_api import sync_playwright

    samples = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(url)
        page.get_by_role("tab", name="Annotate", exact=True).click()
        page.wait_for_function("() => !document.querySelector('#annotate-image-info').innerText.includes('No image open')",
                               timeout=120_000)
        box = page.locator("#annotate-threshold input[type=number]").first
        box.fill("0")
        box.press("Enter")
        page.wait_for_timeout(1000)
        page.locator("#annotate-find-all").click()
        page.wait_for_function("() => document.querySelectorAll('#annotate-instances tbody tr').length >= 1", timeout=120_000)
        page.locator("#annotate-instances").scroll_into_view_if_needed()
        for click in range(clicks):
            page.locator("#annotate-clear-clicks").click()  # a message to change from
            page.wait_for_function("() => document.querySelector('#annotate-message').innerText.includes('cleared')",
                                   timeout=60_000)
            ids = {cell.strip().lstrip("▶ ").strip() for cell in page.locator("#annotate-instances tbody tr td:first-child")
                   .all_text_contents()}
            ids = sorted(cell for cell in ids if cell.isdigit())
            wanted = ids[click % len(ids)]
            cell = page.locator("#annotate-instances").get_by_text(re.compile(rf"^(▶ )?{wanted}$")).locator("visible=true").first
            started = time.perf_counter()
            cell.click()
            page.wait_for_function("(id) => document.querySelector('#annotate-message').innerText.includes('Selected #' + id)",
                                   arg=wanted, timeout=60_000)
            samples.append((time.perf_counter() - started) * 1000)
        browser.close()
    return p95(samples)


def load(studio: Studio, project_id: int, image_ids: list[int], concept_id: int, sessions: int,
         old: bool) -> tuple[float, float, float]:
    """(p50, p95 of Find all with `sessions` sessions pressing it at once, one session alone), ms.

    The handlers run under the queue policy of each code path: the old one group of one
    worker (events one after another, whoever sent them) or the new group of
    SESSION_PARALLELISM workers with the per-session lock (app.ui.session_order); a
    ThreadPoolExecutor of that size stands in for gradio's queue workers.
    """
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from app.ui.session_order import SESSION_PARALLELISM, in_session_order

    find_all = in_session_order(annotate_proposals.find_all)
    states = []
    for index in range(sessions):
        session = dict(zip(VIEW_OUTPUTS, annotate_navigation.open_project(studio, new_session(), 0.0, project_id)))["session"]
        image_id = image_ids[index % len(image_ids)]
        states.append(dict(zip(VIEW_OUTPUTS, annotate_navigation.open_image(studio, session, 0.0, image_id)))["session"])

    def press(index: int, sent: float) -> float:
        find_all(SimpleNamespace(session_hash=f"s{index}"), studio, states[index], 0.0, "base", concept_id)
        return (time.perf_counter() - sent) * 1000

    studio.models.cache.clear()
    alone = press(0, time.perf_counter())
    studio.models.cache.clear()
    with ThreadPoolExecutor(max_workers=1 if old else SESSION_PARALLELISM) as queue:
        sent = time.perf_counter()
        latencies = list(queue.map(lambda index: press(index, sent), range(sessions)))
    return statistics.median(latencies), p95(latencies), alone
