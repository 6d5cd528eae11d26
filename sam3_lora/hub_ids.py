"""Which Hugging Face Hub model a set of SAM3 weights came from.

A model card's `base_model` and an adapter's `base_model_name_or_path` must name a Hub
repository (`owner/name`), never a local folder: on the Hub a path means nothing, and
the Hub links an adapter to its base model only through that id. Training often runs
from a local copy, so the id is resolved in this order:

  1. the declared id (`model.base_model` of a TrainConfig, `SAM3_BASE_MODEL` of the studio);
  2. `source` itself when it is a Hub id and no local folder of that name exists;
  3. the id written in a Hub cache path (`.../models--facebook--sam3/snapshots/<sha>`);
  4. None: not from the Hub (e.g. the tiny random SAM3 of the tests and the offline demo).
"""
from __future__ import annotations

import re
from pathlib import Path

# owner/name as the Hub spells repositories: letters, digits, '-', '_', '.'; no leading '.' or '-'.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_CACHE_FOLDER = re.compile(r"models--([A-Za-z0-9][A-Za-z0-9_.-]*)--([A-Za-z0-9][A-Za-z0-9_.-]*)")


def is_hub_id(value: str) -> bool:
    """True for `owner/name` (e.g. facebook/sam3); False for paths such as `./x/y`, `/models/sam3` or `a/b/c`."""
    return HUB_ID.fullmatch(value) is not None and ".." not in value


def base_model_id(source: str | Path, declared: str | None = None) -> str | None:
    """The Hub id of the weights loaded from `source` (see the module docstring), or None."""
    if declared:
        return declared
    source = str(source)
    if is_hub_id(source) and not Path(source).exists():
        return source
    cached = [match for match in map(_CACHE_FOLDER.fullmatch, Path(source).parts) if match]
    if cached:
        owner, name = cached[-1].groups()
        return f"{owner}/{name}"
    return None
