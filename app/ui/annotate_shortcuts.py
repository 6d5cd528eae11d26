"""Keyboard shortcuts of the Annotate tab: a key clicks the button with that elem_id.

Registered once per page with `demo.load(None, js=SHORTCUTS_JS)`. Keys are ignored
while typing in a text field (dropdown filters included), while the Annotate tab is
hidden (its Find all button has no layout box then), and z inside the brush editor
is left to the editor's own undo.
"""
from __future__ import annotations

import json

SHORTCUTS = {  # key (KeyboardEvent.key, lower case) -> elem_id of the button it clicks
    "f": "annotate-find-all",
    "a": "annotate-accept",
    "r": "annotate-reject",
    "Delete": "annotate-delete",
    "s": "annotate-save-mask",
    "z": "annotate-undo",
    "n": "annotate-next",
    "p": "annotate-prev",
    "m": "annotate-other-mask",
}

SHORTCUT_HELP = (
    "Keys: **f** find all · **a** accept · **r** reject · **Delete** delete · **s** save mask · "
    "**z** / **Ctrl+Z** undo · **n** / **p** next / previous image · **m** other mask of a lone click "
    "(not while typing in a field)."
)

SHORTCUTS_JS = """
() => {
  if (window.__annotateShortcuts) return;
  window.__annotateShortcuts = true;
  const keys = %s;
  const typing = (el) => el && (el.isContentEditable || el.tagName === "TEXTAREA" || el.tagName === "SELECT" ||
    (el.tagName === "INPUT" && !["range", "radio", "checkbox", "button", "submit"].includes(el.type)));
  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.metaKey || event.repeat || typing(event.target)) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (event.ctrlKey && key !== "z") return;
    const id = keys[key];
    if (!id) return;
    if (key === "z" && event.target.closest && event.target.closest("#annotate-editor")) return;
    if (!document.getElementById("annotate-find-all")?.offsetParent) return;  // Annotate tab not showing
    const host = document.getElementById(id);
    const button = host && (host.tagName === "BUTTON" ? host : host.querySelector("button"));
    if (!button || button.disabled) return;
    event.preventDefault();
    button.click();
  });
}
""" % json.dumps(SHORTCUTS)
