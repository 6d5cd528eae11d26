"""The media store: content-addressed files under one root folder (DATA_DIR/media).

Images live at `images/<first 2 hex>/<sha256>.png`, written once per hash and
atomically (temp file in the same folder, fsync, os.replace, fsync the folder), so a
reader never sees half a file and a crash leaves at worst a stray `.tmp-*` file.
Every path that leaves the store (downloads, exports) goes through `media_path`,
which refuses anything that resolves outside the root.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import tempfile
from pathlib import Path, PurePosixPath


class MediaPathError(ValueError):
    """A relative media path that would leave the media root, or is malformed."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_relative_path(sha256: str) -> str:
    """'abcdef...' -> 'images/ab/abcdef....png' (the fan-out keeps folders small)."""
    return f"images/{sha256[:2]}/{sha256}.png"


def write_atomically(path: Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` so that `path` is either absent, the old file, or all of `data`.
    durable=False leaves the fsyncs to the caller (store_pngs makes a batch durable at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(data)
            if durable:
                temp_file.flush()
                os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX: the directory entry lives in the folder)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported here (e.g. Windows); the data itself is fsynced
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def store_png(media_dir: Path | str, png_bytes: bytes) -> str:
    """Store PNG bytes once per content hash; returns the path relative to `media_dir`.

    A second call with the same bytes finds the file and writes nothing.
    """
    relative = image_relative_path(sha256_hex(png_bytes))
    target = media_path(media_dir, relative)
    if not target.is_file():
        write_atomically(target, png_bytes)
    return relative


def _syncfs(folder: Path) -> bool:
    """Flush every written file of the filesystem holding `folder` (Linux syncfs(2)); False where unavailable."""
    libc_name = ctypes.util.find_library("c")
    syncfs = getattr(ctypes.CDLL(libc_name, use_errno=True), "syncfs", None) if libc_name else None
    if syncfs is None:
        return False
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        if syncfs(descriptor) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
    finally:
        os.close(descriptor)
    return True


def store_pngs(media_dir: Path | str, pngs: list[bytes]) -> list[str]:
    """store_png for a batch: each file written to a temp file and renamed into place, then all
    made durable by one barrier before returning (syncfs of the media filesystem, or an fsync
    of each file and folder where syncfs is missing). An import of 50,000 images spends its
    time in fsync otherwise: two per image (bench/import_bench.py)."""
    relatives, written = [], []
    for png_bytes in pngs:
        relative = image_relative_path(sha256_hex(png_bytes))
        target = media_path(media_dir, relative)
        relatives.append(relative)
        if not target.is_file():
            write_atomically(target, png_bytes, durable=False)
            written.append(target)
    if written and not _syncfs(Path(media_dir)):
        for target in written:
            with open(target, "rb") as stored:
                os.fsync(stored.fileno())
        for folder in {target.parent for target in written}:
            _fsync_folder(folder)
    return relatives


def media_path(media_dir: Path | str, relative: str) -> Path:
    """Absolute path of `relative` inside the media root; MediaPathError if it would leave it.

    Refused: empty names, NUL bytes, backslashes, absolute paths, any `..` part, and
    names whose resolved target (symlinks followed) is outside the root. Callers pass
    names they decoded (URL-unquoted) themselves; `%2e%2e%2f` stays a literal name.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise MediaPathError("media path is empty")
    if "\x00" in relative:
        raise MediaPathError(f"media path {relative!r} contains a NUL byte")
    if "\\" in relative:
        raise MediaPathError(f"media path {relative!r} contains a backslash")
    pure = PurePosixPath(relative)
    if pure.is_absolute():
        raise MediaPathError(f"media path {relative!r} is absolute; only paths inside the media folder are served")
    if ".." in pure.parts:
        raise MediaPathError(f"media path {relative!r} contains '..'; only paths inside the media folder are served")
    root = Path(media_dir).resolve()
    resolved = (root / pure).resolve()
    if not resolved.is_relative_to(root):
        raise MediaPathError(f"media path {relative!r} resolves outside the media folder (a symlink pointing out?)")
    return resolved
