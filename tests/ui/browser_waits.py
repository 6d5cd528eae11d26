"""Waits on the studio page shared by the browser tests: a component's text, and its progress overlay gone."""
from __future__ import annotations

from playwright.sync_api import Page


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
