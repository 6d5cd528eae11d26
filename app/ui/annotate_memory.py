"""Where the user was in each project's Annotate tab (open image, threshold), kept in their browser.

A gr.BrowserState (the browser's localStorage) holds {project id: {"image_id", "threshold"}};
`remember` writes it whenever the session or the threshold changes, `restore` runs after a
project is opened (page load included) and goes back to that image and threshold. Separate
from annotate_navigation so another ordering of images (e.g. a review queue) composes with it.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from app.store import projects
from app.studio import Studio
from app.ui.annotate_navigation import open_image
from app.ui.annotate_view import DEFAULT_THRESHOLD, copy_session, render, unchanged_view

STORAGE_KEY = "sam3-studio-annotate"


def remember(memory: dict | None, session: dict[str, Any] | None, threshold: float | None) -> dict:
    """memory with the session's project -> its open image and the threshold (unchanged without an open image)."""
    memory = dict(memory or {})
    session = session or {}
    if session.get("project_id") is not None and session.get("image_id") is not None:
        memory[str(session["project_id"])] = {
            "image_id": int(session["image_id"]),
            "threshold": None if threshold is None else float(threshold),
        }
    return memory


def restore(studio: Studio, session: dict[str, Any], threshold: float | None, memory: dict | None) -> tuple:
    """After a project opened: its remembered image and threshold -> (the seven VIEW outputs, threshold).
    Nothing changes when nothing is remembered, the image left the project, or another handler has
    run since the opening (the session is no longer "restorable", app.ui.annotate_view.copy_session):
    a restore queued behind the user's first click must not undo it.

    The remembered threshold applies only while the page shows the default one: a threshold set on
    this page is newer than the browser's memory (which is written a round trip later), and a
    restore that ends after the user typed one must not put the old value back. The threshold
    output is sent only when it changes, for the same reason."""
    unchanged = (*unchanged_view(), gr.update())
    if not session.get("restorable"):
        return unchanged
    entry = (memory or {}).get(str(session.get("project_id")))
    if not isinstance(entry, dict):
        return unchanged
    remembered, current = entry.get("threshold"), threshold
    page_default = current is None or float(current) == DEFAULT_THRESHOLD
    if page_default and isinstance(remembered, (int, float)) and 0 <= remembered <= 1:
        threshold = float(remembered)
    threshold_output = gr.update() if threshold == current else threshold
    image_id = entry.get("image_id")
    try:
        image = projects.get_image(studio.engine, int(image_id))
    except (TypeError, ValueError):  # deleted meanwhile, or garbage in the browser's storage
        return unchanged
    if image.project_id != session.get("project_id"):
        return unchanged
    if image.id == session.get("image_id"):
        if threshold == current:  # already there: nothing to send (this runs on every tab entry)
            return unchanged
        return (*render(studio, copy_session(session), threshold, "", editor=False, listing=False), threshold_output)
    return (*open_image(studio, session, threshold, image.id), threshold_output)
