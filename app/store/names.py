"""Names people and files give things (projects, concepts, image file names), checked
before they reach a row.

PostgreSQL text cannot hold NUL (psycopg raises DataError), and a control character
or a name made only of invisible (format) characters such as U+200B looks empty in
every list, so both are refused with the position of the offending character.
"""
from __future__ import annotations

import unicodedata

MAX_NAME_LENGTH = 100
MAX_FILE_NAME_LENGTH = 1000


def _control_character(text: str) -> str | None:
    """'U+0000 at position 3' for the first control character (category Cc), else None."""
    for position, character in enumerate(text):
        if unicodedata.category(character) == "Cc":
            return f"U+{ord(character):04X} at position {position}"
    return None


def _visible(text: str) -> bool:
    """True when some character is neither whitespace nor an invisible format character (Cf)."""
    return any(not character.isspace() and unicodedata.category(character) != "Cf" for character in text)


def clean_name(name: object, what: str) -> str:
    """Trim and collapse inner whitespace; refuse non-text, control characters (NUL ...),
    names with no visible character (empty, or only zero-width ones) and names longer
    than MAX_NAME_LENGTH. Tabs and newlines count as whitespace and are collapsed."""
    if not isinstance(name, str):
        raise ValueError(f"{what} must be text, got {type(name).__name__}")
    cleaned = " ".join(name.split())
    control = _control_character(cleaned)
    if control:
        raise ValueError(f"{what} {cleaned[:20]!r} contains the control character {control}")
    if not cleaned:
        raise ValueError(f"{what} is empty")
    if not _visible(cleaned):
        raise ValueError(f"{what} {cleaned[:20]!r} has no visible character (only zero-width or format characters)")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} {cleaned[:20]!r}... is {len(cleaned)} characters long; at most {MAX_NAME_LENGTH}")
    return cleaned


def file_name_problem(name: str) -> str | None:
    """Why a file name cannot be stored as an image's name, or None when it can."""
    control = _control_character(name)
    if control:
        return f"file name contains the control character {control}"
    if not _visible(name):
        return "file name has no visible character"
    if len(name) > MAX_FILE_NAME_LENGTH:
        return f"file name is {len(name)} characters long; at most {MAX_FILE_NAME_LENGTH}"
    return None
