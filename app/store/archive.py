"""Where uploaded files come from: a zip, a folder, or in-memory (name, bytes) pairs,
behind one small interface (`FileSource`) that uploads and every importer share.

Zips are untrusted: names that are absolute or contain '..' are refused, `__MACOSX/`
and hidden files ignored, encrypted members refused, and before anything is read the
member count (MAX_ZIP_MEMBERS) and the sum of the declared sizes are bounded.
Python's reader never yields more than a member's declared `file_size`, so bounding
the declared sizes bounds what extraction can produce (a zip bomb is refused unread).
"""
from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import BinaryIO

DEFAULT_MAX_ZIP_TOTAL_BYTES = 8 * 1024**3
DEFAULT_MAX_ZIP_MEMBERS = 10_000  # MAX_ZIP_MEMBERS; ~100 files/s are decoded, so ~2 min per full zip
MISSING = "missing from the upload"


def human_bytes(num_bytes: int) -> str:
    """1.5 * 2**20 -> '1.5 MB' (MiB, like MAX_UPLOAD_MB)."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if num_bytes >= scale:
            value = num_bytes / scale
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{num_bytes} bytes"


def size_refusal(num_bytes: int, max_bytes: int) -> str | None:
    """The refusal reason for a file of `num_bytes`, or None if its size is fine."""
    if num_bytes == 0:
        return "empty file"
    if num_bytes > max_bytes:
        return f"file is {human_bytes(num_bytes)}, over the {human_bytes(max_bytes)} limit"
    return None


def unsafe_member_name(name: str) -> bool:
    """True for names that are absolute, carry a drive letter, or contain a '..' part."""
    normalized = name.replace("\\", "/")
    return (
        normalized.startswith("/")
        or re.match(r"^[A-Za-z]:", normalized) is not None
        or ".." in PurePosixPath(normalized).parts
    )


def _ignored(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return any(part == "__MACOSX" or (part.startswith(".") and part not in (".", "..")) for part in parts)


def open_zip(zip_source: bytes | Path | str) -> zipfile.ZipFile:
    """A ZipFile over bytes or a path; ValueError('not a zip archive') otherwise."""
    try:
        return zipfile.ZipFile(io.BytesIO(zip_source) if isinstance(zip_source, bytes) else zip_source)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"not a zip archive ({error})") from None


def zip_members(
    archive: zipfile.ZipFile,
    max_total_bytes: int = DEFAULT_MAX_ZIP_TOTAL_BYTES,
    max_members: int = DEFAULT_MAX_ZIP_MEMBERS,
) -> tuple[list[zipfile.ZipInfo], list[tuple[str, str]], str]:
    """(members to read, (name, reason) of the refused ones, reason the whole zip is refused or "").

    Over the member cap or the total size the zip is refused whole, unread.
    """
    members: list[zipfile.ZipInfo] = []
    refused: list[tuple[str, str]] = []
    for info in archive.infolist():
        if info.is_dir():
            continue
        if unsafe_member_name(info.filename):
            refused.append((info.filename, "unsafe name in the zip (absolute or containing '..'); not extracted"))
        elif _ignored(info.filename):
            continue
        elif info.flag_bits & 0x1:
            refused.append((info.filename, "encrypted zip member; not extracted"))
        else:
            members.append(info)
    if len(members) > max_members:
        return [], refused, (
            f"the zip holds {len(members):,} files, over the limit of {max_members:,} for one upload "
            "(MAX_ZIP_MEMBERS); split it into smaller zips. Nothing from it was stored"
        )
    total = sum(info.file_size for info in members)
    if total > max_total_bytes:
        return [], refused, (
            f"the zip expands to {human_bytes(total)}, over the {human_bytes(max_total_bytes)} "
            "limit for one upload; nothing from it was stored"
        )
    return members, refused, ""


def read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> bytes | str:
    """The member's bytes, or the refusal reason; its declared size is checked before reading."""
    reason = size_refusal(info.file_size, max_bytes)
    if reason:
        return reason
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError, ValueError) as error:
        return f"could not be extracted from the zip ({error})"


def read_upload_file(path: Path, max_bytes: int) -> bytes | str:
    """The bytes of `path`, or the refusal reason; the size is checked before reading."""
    try:
        reason = size_refusal(path.stat().st_size, max_bytes)
        return reason if reason else path.read_bytes()
    except OSError as error:
        return f"could not be read ({error.strerror or error})"


class FileSource:
    """Named files of one upload: `names` (posix paths, in upload order), `read(name)`
    (bytes, or the reason they are unavailable), `open(name)` (a binary stream, for big
    json files read piece by piece), and `refused` (name, reason) for members refused
    on sight. Build one with `from_zip`, `from_folder` or `from_mapping`."""

    def __init__(self, sizes: dict[str, int], reader, opener, max_bytes: int, refused=None, closer=None):
        self.sizes = sizes  # name -> size in bytes (declared, for zip members)
        self.names = list(sizes)
        self._reader, self._opener, self._closer = reader, opener, closer
        self.max_bytes = max_bytes
        self.refused: list[tuple[str, str]] = list(refused or [])
        self._by_base: dict[str, list[str]] = {}
        for name in self.names:
            self._by_base.setdefault(PurePosixPath(name).name, []).append(name)

    @classmethod
    def from_zip(cls, archive: zipfile.ZipFile, max_bytes: int, max_total_bytes: int = DEFAULT_MAX_ZIP_TOTAL_BYTES,
                 max_members: int = DEFAULT_MAX_ZIP_MEMBERS) -> "FileSource":
        """ValueError when the whole zip is refused (member cap, total size)."""
        members, refused, whole = zip_members(archive, max_total_bytes, max_members)
        if whole:
            raise ValueError(whole)
        infos = {info.filename: info for info in members}
        return cls({name: info.file_size for name, info in infos.items()}, lambda name: read_zip_member(archive, infos[name], max_bytes),
                   lambda name: archive.open(infos[name]), max_bytes, refused, archive.close)

    @classmethod
    def from_folder(cls, folder: Path, max_bytes: int) -> "FileSource":
        """Every regular file under `folder` (hidden ones ignored); symlinks out of it are skipped."""
        root = folder.resolve()
        sizes = {
            path.relative_to(root).as_posix(): path.stat().st_size for path in sorted(root.rglob("*"))
            if path.is_file() and path.resolve().is_relative_to(root) and not _ignored(path.relative_to(root).as_posix())
        }
        return cls(sizes, lambda name: read_upload_file(root / name, max_bytes),
                   lambda name: open(root / name, "rb"), max_bytes)

    @classmethod
    def from_mapping(cls, files: Mapping[str, bytes], max_bytes: int) -> "FileSource":
        return cls({name: len(data) for name, data in files.items()}, lambda name: files[name], lambda name: io.BytesIO(files[name]), max_bytes)

    def find(self, file_name: str, *folders: str) -> str | None:
        """The stored name for `file_name`: itself, under one of `folders`, or its base name when unique."""
        if unsafe_member_name(file_name):
            return None
        clean = file_name.replace("\\", "/").removeprefix("./")
        for candidate in (clean, *(f"{folder}/{clean}" for folder in folders if folder not in ("", "."))):
            if candidate in self.sizes:
                return candidate
        matches = self._by_base.get(PurePosixPath(clean).name, [])
        return matches[0] if len(matches) == 1 else None

    def read(self, name: str) -> bytes | str:
        return self._reader(name)

    def open(self, name: str) -> BinaryIO:
        return self._opener(name)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()

    def __enter__(self) -> "FileSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_source(path: Path, max_bytes: int, max_total_bytes: int = DEFAULT_MAX_ZIP_TOTAL_BYTES,
                max_members: int = DEFAULT_MAX_ZIP_MEMBERS) -> FileSource:
    """A FileSource over a .zip file or a folder; ValueError when the zip is refused."""
    if path.is_dir():
        return FileSource.from_folder(path, max_bytes)
    return FileSource.from_zip(open_zip(path), max_bytes, max_total_bytes, max_members)
