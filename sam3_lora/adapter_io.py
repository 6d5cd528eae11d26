"""Save and load LoRA adapters as standard PEFT folders, atomically and strictly.

A folder holds `adapter_config.json` + `adapter_model.safetensors` (+ peft's
README.md), so `PeftModel.from_pretrained(Sam3Model.from_pretrained(...), folder)`
loads it without this project.

Save: write into a temp sibling `.<name>.tmp-XXXX`, fsync every file and the
folder, then swap it into place (Linux `renameat2(RENAME_EXCHANGE)`: at every
instant `<name>` is either the whole old or the whole new adapter; elsewhere
two renames through `.<name>.old-XXXX`, which the next save restores if a crash
fell between them). A crash mid-write leaves only a temp sibling, removed by the
next save of the same folder. One writer per folder.

Load: peft loads with `strict=False` and only warns about missing or unexpected
keys (the public SAM3 LoRA scripts go silent this way); we compare the keys of the
file with the LoRA parameters of the loaded model and refuse any difference.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


class AdapterFolderError(ValueError):
    """The adapter folder is missing, incomplete, or does not fit the model."""


def save_adapter(peft_model: PeftModel, folder: str | Path) -> Path:
    """Write `peft_model`'s adapter to `folder` atomically (replacing any adapter there); return the folder."""

    def write(temp: Path) -> None:
        peft_model.save_pretrained(temp)
        _require_adapter_files(temp)

    return replace_folder_atomically(folder, write)


def replace_folder_atomically(folder: str | Path, write: Callable[[Path], None]) -> Path:
    """Make `folder` hold exactly what `write(temp)` puts into an empty temp sibling, atomically.

    `write` fills `.<name>.tmp-XXXX`; every file in it and the folder itself are fsynced, then
    it is swapped into place (`_move_into_place`: readers see the whole old or the whole new
    folder, never none), and the parent is fsynced. If `write` raises, the temp is removed and
    `folder` is left as it was. Stale temp / backup siblings of an earlier crash are settled
    first. One writer per folder. Returns `folder`.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted_swap(folder)
    temp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        write(temp)
        for path in temp.iterdir():
            fsync_path(path)
        fsync_path(temp)
        _move_into_place(temp, folder)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    fsync_path(folder.parent)
    return folder


def load_adapter(
    base_model: torch.nn.Module, folder: str | Path, merge: bool = False, trainable: bool = False
) -> torch.nn.Module:
    """Load the PEFT adapter in `folder` onto `base_model` (modified in place) and check it strictly.

    Returns the PeftModel, or with `merge=True` the plain model with W <- W + (alpha/r) B A
    folded in (`merge_and_unload`). `trainable=True` keeps the LoRA tensors trainable
    (to continue training); otherwise the model is in eval mode, all frozen.
    Raises AdapterFolderError when a file is missing, any key differs (`base_model` is
    then handed back without LoRA layers) or a shape differs (discard `base_model`).
    """
    folder = Path(folder)
    _require_adapter_files(folder)
    try:
        peft_model = PeftModel.from_pretrained(base_model, folder, is_trainable=trainable)
    except (RuntimeError, ValueError) as error:  # e.g. shape mismatch, no module matched the config
        raise AdapterFolderError(f"adapter in {folder} does not fit this model: {error}") from error
    missing, unexpected = adapter_key_mismatch(peft_model, folder / WEIGHTS_FILE)
    if missing or unexpected:
        peft_model.unload()  # give the caller back its base model without half-loaded LoRA layers
        raise AdapterFolderError(
            f"adapter in {folder} does not match its own config / this model: "
            f"missing from {WEIGHTS_FILE} (the model has these LoRA tensors, the file does not): {missing}; "
            f"unexpected in {WEIGHTS_FILE} (no such LoRA tensor in the model): {unexpected}"
        )
    return peft_model.merge_and_unload() if merge else peft_model


def adapter_key_mismatch(peft_model: PeftModel, weights_file: str | Path) -> tuple[list[str], list[str]]:
    """(missing, unexpected): sorted keys in the model's adapter state dict but not in the file, and vice versa.

    The model side is `get_peft_model_state_dict`, i.e. exactly the keys `save_pretrained` writes.
    save_embedding_layers=False: our LoRA targets linear layers only and never resizes the vocabulary,
    so no embedding is saved either way, and "auto" would ask the Hub for the config of the base
    named in adapter_config.json (a network call, with retries when offline) on every load.
    """
    expected = set(get_peft_model_state_dict(peft_model, save_embedding_layers=False))
    with safe_open(str(weights_file), framework="pt") as handle:
        present = set(handle.keys())
    return sorted(expected - present), sorted(present - expected)


def _require_adapter_files(folder: Path) -> None:
    if not folder.is_dir():
        raise AdapterFolderError(f"adapter folder {folder} does not exist")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise AdapterFolderError(
            f"adapter folder {folder} lacks {missing}; a PEFT adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE} "
            "(written by save_adapter or PeftModel.save_pretrained with safetensors)"
        )


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes the names in it durable)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two existing paths with renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or glibc < 2.28
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    return result == 0  # EINVAL / ENOSYS: filesystem or kernel without exchange


def _move_into_place(temp: Path, folder: Path) -> None:
    """Make the complete `temp` folder become `folder`, replacing an existing one."""
    if not folder.exists():
        os.rename(temp, folder)
        return
    if _exchange(temp, folder):
        shutil.rmtree(temp)  # now holds the previous adapter
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    os.rename(folder, backup / folder.name)
    os.rename(temp, folder)
    shutil.rmtree(backup)


def _recover_interrupted_swap(folder: Path) -> None:
    """Before a save: restore an adapter a crash left in a backup, and remove stale temp / backup siblings."""
    for stale in sorted(folder.parent.glob(f".{folder.name}.old-*")):
        kept = stale / folder.name
        if not folder.exists() and kept.is_dir():
            os.rename(kept, folder)
        shutil.rmtree(stale, ignore_errors=True)
    for stale in folder.parent.glob(f".{folder.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
