"""Training checkpoints: atomic writes, weights_only loads, RNG state as plain types.

A checkpoint is a dict of plain types (dict, list, tuple, str, int, float, bool,
None) and tensors, so `torch.load(path, weights_only=True)` reads it without
running pickled code. Writes go to a temp file in the same folder, are fsynced,
moved over the target with `os.replace` (atomic on POSIX), then the folder is
fsynced so the rename itself survives a power cut. A process killed mid-save
leaves only a temp file behind; the previous checkpoint stays intact and
`remove_stale_temp_files` clears the leftovers at the next start.

Names: `checkpoint-step{step:09d}.pt`; the latest is the highest step, read from
the name (mtimes are not trusted across copies and clock changes).
"""
from __future__ import annotations

import os
import random
import re
import secrets
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-step(\d+)\.pt$")
TEMP_MARKER = ".tmp-"  # temp names: "<target name>.tmp-<pid>-<hex>"
_PLAIN_SCALARS = (str, int, float, bool, type(None))


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file."""


def checkpoint_path(folder: str | Path, step: int) -> Path:
    """Where the checkpoint taken after optimiser step `step` lives in `folder`."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return Path(folder) / f"checkpoint-step{step:09d}.pt"


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write `state` to `path` atomically; return the path.

    Raises CheckpointError naming the offending entry when `state` holds anything
    but plain types and tensors (checked before any byte is written).
    """
    path = Path(path)
    _check_plain(state, "state")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{path.name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")
    # O_EXCL: never write into someone else's temp file; 0o666 lets the umask decide.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with `weights_only=True`; CheckpointError naming the file if it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, garbage bytes, disallowed pickled globals
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a weights_only checkpoint ({type(error).__name__}: {error}); "
            "delete it to resume from the one before"
        ) from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint with the highest step in `folder`, or None when there is none."""
    found = _checkpoints_by_step(folder)
    return found[-1][1] if found else None


def remove_old_checkpoints(folder: str | Path, keep: int) -> list[Path]:
    """Delete all but the `keep` highest-step checkpoints in `folder`; return the deleted paths."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the latest checkpoint is what a resume needs), got {keep}")
    old = [path for _, path in _checkpoints_by_step(folder)[:-keep]]
    for path in old:
        path.unlink(missing_ok=True)
    return old


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete temp files left by saves that were killed; return what was deleted.

    Call it at the start of a run, before any save: the folder belongs to one job,
    so no live save can own a temp file at that moment.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [path for path in folder.iterdir() if TEMP_MARKER in path.name and path.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """Checkpoint to resume from: None -> None, "auto" -> latest in output_dir (or None), else that file."""
    if resume is None:
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"resume checkpoint {path} does not exist; give an existing file, 'auto' or none")
    return path


def capture_rng_state() -> dict:
    """Every RNG the training loop draws from, as weights_only-safe plain types.

    Returns {"torch_cpu": uint8 tensor, "torch_cuda": [uint8 tensor per device],
    "python": [version, [625 ints], gauss_next], "numpy": {"name", "keys": int64
    tensor [624], "pos", "has_gauss", "cached_gaussian"}}.
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": list(cuda),
        "python": [version, list(internal), gauss_next],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }


def restore_rng_state(state: dict) -> None:
    """Put back the RNG states `capture_rng_state` returned (CUDA: as many devices as both sides have)."""
    torch.set_rng_state(state["torch_cpu"].cpu())
    saved_cuda = state.get("torch_cuda", [])
    if saved_cuda and torch.cuda.is_available():
        for device_index, cuda_state in enumerate(saved_cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device_index)
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    saved_numpy = state["numpy"]
    np.random.set_state((
        saved_numpy["name"],
        saved_numpy["keys"].numpy().astype(np.uint32),
        saved_numpy["pos"],
        saved_numpy["has_gauss"],
        saved_numpy["cached_gaussian"],
    ))


def _checkpoints_by_step(folder: str | Path) -> list[tuple[int, Path]]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _check_plain(value, where: str) -> None:
    """Raise CheckpointError naming the first entry weights_only loading would refuse."""
    if isinstance(value, (torch.Tensor, *_PLAIN_SCALARS)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(f"{where} has a key {key!r} of type {type(key).__name__}; use str or int keys")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise CheckpointError(
        f"{where} is a {type(value).__module__}.{type(value).__name__}; a checkpoint holds plain types and "
        "tensors only (use capture_rng_state for RNG states, .state_dict() for modules and optimisers)"
    )


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; Windows cannot open a folder for fsync and needs none."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
