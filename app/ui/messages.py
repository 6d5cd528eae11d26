"""Status-line wording shared by every tab's handlers: refusals start with REFUSED and
name what was not done and why, so a user (and the browser test) tells them apart."""
from __future__ import annotations

import re

REFUSED = "**Not done:**"
NO_PROJECT = "choose a project first (or create one with 'New project')"


def refusal(what: str, error: Exception | str) -> str:
    """'**Not done:** cannot add the concept: concept phrase is empty.' (markdown specials escaped)."""
    reason = re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", str(error).rstrip("."))
    return f"{REFUSED} {what}: {reason}." if what else f"{REFUSED} {reason}."
