"""Waits on the studio page shared by the browser tests: a component's text, its progress overlay
gone, and a canvas that has finished drawing."""
from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image
from playwright.sync_api import Page

SETTLE_MS = 400  # two screenshots this far apart that agree: the canvas has stopped drawing
CHANGED_LEVELS = 24  # a colour step larger than anti-aliasing and PNG noise


def wait_text(page: Page, selector: str, needle: str, timeout_ms: int) -> str:
    """Wait until the element's text contains `needle` or "not done" (a refusal; case-insensitive);
    return the text, asserting it is not a refusal."""
    found = page.wait_for_function(
        "([sel, needle]) => { const e = document.querySelector(sel); if (!e) return false;"
        " const text = e.innerText; const lower = text.toLowerCase();"
        " return (lower.includes(needle) || lower.includes('not done')) ? text : false; }",
        arg=[selector, needle.lower()], timeout=timeout_ms)
    text = found.json_value()
    assert needle.lower() in text.lower(), text
    return text


def wait_no_progress(page: Page, selector: str, timeout_ms: int) -> None:
    """Wait until the component shows no progress overlay ('processing' text or an ETA bar)."""
    page.wait_for_function("(sel) => { const e = document.querySelector(sel);"
                           " return !!e && !e.innerText.includes('processing') && !e.querySelector('.eta-bar'); }",
                           arg=selector, timeout=timeout_ms)


def shown_pixels(page: Page, selector: str) -> np.ndarray:
    """What the element shows now, uint8 [h, w, 3]: the page's pixels in its box. (An element
    screenshot waits for the element to be "stable" first, which the editor's canvas never was
    for 20 s in one run; a clip of the viewport takes the picture as it is.)"""
    element = page.locator(selector).first
    element.scroll_into_view_if_needed()
    box = element.bounding_box()
    if not box or box["width"] < 1 or box["height"] < 1:
        return np.zeros((0, 0, 3), dtype=np.uint8)
    png = page.screenshot(clip=box, animations="disabled")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def changed_pixels(before: np.ndarray, after: np.ndarray) -> int:
    """Pixels whose colour moved by more than CHANGED_LEVELS in some channel (a different size: all)."""
    if before.shape != after.shape:
        return after.shape[0] * after.shape[1]
    return int((np.abs(before.astype(np.int16) - after.astype(np.int16)).max(axis=2) > CHANGED_LEVELS).sum())


def wait_drawn(page: Page, selector: str, timeout_ms: int, unlike: np.ndarray | None = None) -> np.ndarray:
    """Wait until the element shows the same picture in two screenshots SETTLE_MS apart (and, with
    `unlike`, one that differs from it); return that picture.

    gradio's ImageEditor draws a value asynchronously (the background, then each layer from its
    URL) and drops a layer whose load a later value overtook: a stroke painted before the layer
    is drawn lands on nothing. Its progress overlay is gone long before that."""
    deadline = time.monotonic() + timeout_ms / 1000
    previous = shown_pixels(page, selector)
    while True:
        page.wait_for_timeout(SETTLE_MS)
        current = shown_pixels(page, selector)
        settled = changed_pixels(previous, current) == 0
        if settled and (unlike is None or changed_pixels(unlike, current) > 0):
            return current
        if time.monotonic() > deadline:
            moved = "still changing" if not settled else f"settled with {changed_pixels(unlike, current)} pixels changed"
            raise AssertionError(f"{selector} did not show the expected picture in {timeout_ms} ms: {moved}")
        previous = current
