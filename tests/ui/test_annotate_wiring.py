"""How the Annotate tab's events are wired (the built gr.Blocks config) and the per-session order
of their handlers (app.ui.session_order) with real threads."""
from __future__ import annotations

import inspect
import logging
import threading
import time
from types import SimpleNamespace

import gradio as gr

from app.ui.layout import build_app
from app.ui.session_order import in_session_order
from tests.ui.annotate_support import studio  # noqa: F401


def annotate_dependencies(demo) -> list:
    """The Blocks' event functions of the Annotate tab (gradio BlockFunction)."""
    return [fn for fn in demo.fns.values() if fn.concurrency_id == "annotate"]


def trigger_events(demo, elem_id: str) -> set[str]:
    """The events of component `elem_id` that run an Annotate handler."""
    ids = {block_id for block_id, block in demo.blocks.items() if getattr(block, "elem_id", None) == elem_id}
    return {event for fn in annotate_dependencies(demo) for target, event in fn.targets if target in ids}


def test_a_threshold_typed_into_the_number_box_refilters_as_a_drag_does(studio):
    demo = build_app(studio)
    # "release" fires only for the slider's handle; "input" also for a number typed into its box
    assert "input" in trigger_events(demo, "annotate-threshold")


def test_annotate_events_run_per_session_without_blanking_the_outputs(studio):
    dependencies = annotate_dependencies(build_app(studio))
    assert len(dependencies) >= 20
    assert all(fn.concurrency_limit > 1 for fn in dependencies), "one user's Find all must not hold the others"
    assert all(fn.show_progress == "minimal" for fn in dependencies)
    assert all(next(iter(inspect.signature(fn.fn).parameters)) == "request" for fn in dependencies), "per-session lock"


def test_one_sessions_events_never_overlap_and_two_sessions_run_side_by_side():
    running: dict[str, int] = {"a": 0, "b": 0}
    overlap = {"same": 0, "across": 0}
    guard = threading.Lock()

    def handler(name: str) -> str:
        with guard:
            running[name] += 1
            overlap["same"] = max(overlap["same"], running[name])
            overlap["across"] = max(overlap["across"], running["a"] + running["b"])
        time.sleep(0.05)
        with guard:
            running[name] -= 1
        return name

    ordered = in_session_order(handler)
    threads = [threading.Thread(target=ordered, args=(SimpleNamespace(session_hash=name), name))
               for name in ("a", "b") * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlap["same"] == 1, "events of one session overlapped"
    assert overlap["across"] == 2, "two sessions waited for each other"



def test_an_event_started_while_another_ran_gets_the_session_that_one_returned():
    """Gradio reads gr.State before the handler waits for the lock: both events below read the
    same session; the second must act on what the first returned, not on that stale copy."""
    first_running, release = threading.Event(), threading.Event()
    seen: list[list[str]] = []

    def handler(session: dict, action: str) -> tuple[dict, str]:
        seen.append(list(session["done"]))
        if action == "find all":
            first_running.set()
            release.wait(5)
        return {"done": [*session["done"], action]}, action

    ordered = in_session_order(handler)
    page, stale = SimpleNamespace(session_hash="page"), {"done": []}
    results: dict[str, tuple] = {}
    find_all = threading.Thread(target=lambda: results.update(find=ordered(page, stale, "find all")))
    find_all.start()
    assert first_running.wait(5)
    accept = threading.Thread(target=lambda: results.update(accept=ordered(page, stale, "accept")))
    accept.start()
    time.sleep(0.1)  # the second event is waiting on the lock with the stale session
    release.set()
    find_all.join()
    accept.join()
    assert seen == [[], ["find all"]]
    assert results["accept"][0] == {"done": ["find all", "accept"]}
    # gradio may read the state before the handler asks for the lock, even after the last one ended
    assert ordered(page, stale, "next")[0] == {"done": ["find all", "accept", "next"]}
    other = ordered(SimpleNamespace(session_hash="other page"), {"done": []}, "accept")
    assert other[0] == {"done": ["accept"]}, "another page's session is its own"


def test_each_ordered_event_leaves_one_log_line_with_the_page_the_handler_and_where_it_went(caplog):
    def step(session: dict, threshold: float) -> tuple[dict, str]:
        return {**session, "image_id": session["image_id"] + 1}, "moved"

    def keep(session: dict, threshold: float) -> tuple[dict, str]:
        return gr.update(), "nothing"

    page = SimpleNamespace(session_hash="abcdefgh-the-rest")
    start = {"project_id": 3, "image_id": 6, "selected": None, "status_filter": "all"}
    with caplog.at_level(logging.INFO, logger="app.ui.session_order"):
        in_session_order(step)(page, start, 0.5)
        in_session_order(keep)(page, start, 0.5)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("annotate step on page abcdefgh: waited "), lines[0]
    assert lines[0].endswith("; project 3 image 6 instance None (all) -> project 3 image 7 instance None (all)"), lines[0]
    assert lines[1].startswith("annotate keep on page abcdefgh"), lines[1]
    assert lines[1].endswith("; project 3 image 7 instance None (all) -> unchanged"), lines[1]


def test_labels_of_look_alikes_side_by_side_do_not_overlap_and_stay_on_the_canvas():
    from app.ui.annotate_overlay import label_positions

    anchors = [(10, 10), (14, 12), (12, 11), (300, 5), (395, 590)]  # three boxes starting at nearly one corner
    sizes = [(80, 14)] * len(anchors)
    spots = label_positions(anchors, sizes, (400, 600))
    boxes = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(spots, sizes)]
    for i, a in enumerate(boxes):
        assert 0 <= a[0] and a[2] <= 400 and 0 <= a[1] and a[3] <= 600, a
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_the_overlay_caption_does_not_cover_the_picture(studio):
    demo = build_app(studio)
    overlay = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "annotate-overlay")
    assert overlay.show_label is False, "gradio draws the label over the image's top-left corner, on the labels"


def test_the_gallery_refreshes_on_entering_its_tab_and_opens_an_image_in_annotate(studio):
    demo = build_app(studio)
    by_id = {getattr(block, "elem_id", None): block_id for block_id, block in demo.blocks.items()}
    data_tab = next(block_id for block_id, block in demo.blocks.items() if getattr(block, "id", None) == "data"
                    and type(block).__name__ == "Tab")
    on_entry = [fn for fn in demo.fns.values() if (data_tab, "select") in fn.targets]
    assert any(by_id["studio-gallery"] in {block._id for block in fn.outputs} for fn in on_entry), \
        "annotation counts changed in Annotate show when the gallery's tab is entered"
    opening = [fn for fn in annotate_dependencies(demo) if (by_id["data-open-in-annotate"], "click") in fn.targets]
    assert len(opening) == 1 and by_id["annotate-image-info"] in {block._id for block in opening[0].outputs}


def test_the_page_load_project_list_and_create_run_one_at_a_time(studio):
    """A page-load list that read the database before a project was created must not land after it."""
    demo = build_app(studio)
    by_id = {getattr(block, "elem_id", None): block_id for block_id, block in demo.blocks.items()}
    writers = [fn for fn in demo.fns.values() if by_id["data-project"] in {block._id for block in fn.outputs}
               and fn.concurrency_id == "project-dropdown"]
    triggers = {event for fn in writers for _, event in fn.targets}
    assert {"load", "submit"} <= triggers, triggers
    assert all(fn.concurrency_limit == 1 for fn in writers)
