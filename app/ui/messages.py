"""Status-line wording shared by every tab's handlers: refusals start with REFUSED and
name what was not done and why, so a user (and the browser test) tells them apart."""
from __future__ import annotations

import re

REFUSED = "**Not done:**"
NO_PROJECT = "choose a project first (or create one with 'New project')"


def escape_markdown(text: object) -> str:
    """Text from users or files shown literally in markdown: markdown specials and the HTML
    characters < > & backslash-escaped (CommonMark renders an escaped character as itself),
    so a COCO file_name like `<img src=x onerror=...>` stays text."""
    return re.sub(r"([\\`*_\[\]<>&#|~!])", r"\\\1", str(text))


def refusal(what: str, error: Exception | str) -> str:
    """'**Not done:** cannot add the concept: concept phrase is empty.' (markdown specials escaped)."""
    reason = escape_markdown(str(error).rstrip("."))
    return f"{REFUSED} {what}: {reason}." if what else f"{REFUSED} {reason}."


def count_of(number: int, noun: str, plural: str | None = None) -> str:
    """'1 proposal', '2 proposals' (plural: noun + 's' unless given)."""
    return f"{number} {noun if number == 1 else (plural or noun + 's')}"
