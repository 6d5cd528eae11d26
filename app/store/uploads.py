"""Uploads: untrusted files -> checked, decoded, re-encoded PNGs + one Image row each.

Per file, in this order (reliability.md, "Uploads"):
1. size cap, checked before anything is read or decoded;
2. empty files refused;
3. format allow-list by content: `Image.open(formats=ALLOWED_FORMATS)`;
4. pixel cap: Pillow's DecompressionBombWarning is an error here, and our own cap
   (default 50M pixels, well below Pillow's 89M warning) is checked on the header
   size, before any pixel is decoded, so memory stays flat for a bomb;
5. full decode (`load()`: a truncated JPEG only fails there), EXIF orientation
   applied, RGB, re-encoded to PNG; sha256 of the PNG bytes;
6. the PNG stored once per hash (media.store_png) and one Image row per project;
   the same picture twice in a project is a duplicate, not a second row.
A refused file stores nothing and never stops the other files of the upload.
"""
from __future__ import annotations

import io
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from app.store.db import read_session, write_session
from app.store.media import sha256_hex, store_png
from app.store.models import Image, Project

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_ZIP_TOTAL_BYTES = 8 * 1024**3
VAL_PERCENT = 20  # about this share of images goes to "val", decided by the hash
PNG_COMPRESS_LEVEL = 6  # changing it changes the PNG bytes, hence the hashes used for dedup

# Leading bytes of formats we refuse, to tell the user what they sent.
_KNOWN_OTHER_FORMATS = (
    (b"GIF87a", "image format GIF is not accepted"),
    (b"GIF89a", "image format GIF is not accepted"),
    (b"%PDF", "not an image: looks like a PDF"),
    (b"PK\x03\x04", "not an image: looks like a zip archive (upload it as a zip)"),
    (b"\x00\x00\x01\x00", "image format ICO is not accepted"),
    (b"8BPS", "image format PSD is not accepted"),
)
# Leading bytes of allowed formats: an open failure then means a damaged file.
_ALLOWED_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")


class ImageRefused(ValueError):
    """A file that is not accepted as an image; `reason` is a short human sentence."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DecodedImage:
    png_bytes: bytes
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one file: status accepted | duplicate | refused."""

    name: str
    status: str
    image_id: int | None = None
    width: int = 0
    height: int = 0
    reason: str = ""


@dataclass
class UploadReport:
    accepted: list[tuple[str, int]] = field(default_factory=list)  # (name, image_id)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    duplicates: list[str] = field(default_factory=list)
    image_ids: dict[str, int] = field(default_factory=dict)  # name -> image id, accepted and duplicates

    def add(self, outcome: IngestOutcome) -> None:
        if outcome.status == "refused":
            self.refused.append((outcome.name, outcome.reason))
            return
        self.image_ids[outcome.name] = outcome.image_id
        if outcome.status == "duplicate":
            self.duplicates.append(outcome.name)
        else:
            self.accepted.append((outcome.name, outcome.image_id))

    def messages(self) -> list[str]:
        """One line per refused or duplicate file, naming it."""
        lines = [f"{name}: {reason}" for name, reason in self.refused]
        return lines + [f"{name}: already in this project" for name in self.duplicates]


def human_bytes(num_bytes: int) -> str:
    """1.5 * 2**20 -> '1.5 MB' (MiB, like MAX_UPLOAD_MB)."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if num_bytes >= scale:
            value = num_bytes / scale
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{num_bytes} bytes"


def human_pixels(num_pixels: int) -> str:
    """400_000_000 -> '400M'; 20_000 -> '20,000'."""
    return f"{round(num_pixels / 1e6, 1):g}M" if num_pixels >= 1_000_000 else f"{num_pixels:,}"


def size_refusal(num_bytes: int, max_bytes: int) -> str | None:
    """The refusal reason for a file of `num_bytes`, or None if its size is fine."""
    if num_bytes == 0:
        return "empty file"
    if num_bytes > max_bytes:
        return f"file is {human_bytes(num_bytes)}, over the {human_bytes(max_bytes)} limit"
    return None


def split_for(sha256: str) -> str:
    """'val' for about VAL_PERCENT % of hashes, else 'train'; the same bytes always agree."""
    return "val" if int(sha256[:8], 16) % 100 < VAL_PERCENT else "train"


def _describe_unknown(data: bytes) -> str:
    """Why bytes that no allowed decoder recognised are refused, in words."""
    for magic, reason in _KNOWN_OTHER_FORMATS:
        if data.startswith(magic):
            return reason
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "image format HEIC/AVIF is not accepted"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head or b"<body" in head:
        return "not an image: looks like HTML"
    if b"<svg" in head:
        return "not an image: looks like SVG (vector images are not accepted)"
    if data.startswith(_ALLOWED_SIGNATURES) or (data.startswith(b"RIFF") and data[8:12] == b"WEBP"):
        return "file is truncated or corrupt"
    try:
        data[:4096].decode("utf-8")
        return "not an image: looks like text"
    except UnicodeDecodeError:
        return f"not an image: unknown format (accepted: {', '.join(ALLOWED_FORMATS)})"


def _bomb_reason(error: Exception, max_pixels: int) -> str:
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{human_pixels(int(found.group(1)))} pixels" if found else "too many pixels"
    return f"image is {size}, over the {human_pixels(max_pixels)} pixel limit"


def decode_to_png(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Untrusted bytes -> RGB PNG bytes, sha256, width, height; ImageRefused on any problem.

    `max_pixels` is effectively min(max_pixels, PIL.Image.MAX_IMAGE_PIXELS), since
    Pillow's own bomb warning is turned into an error as well.
    """
    if not data:
        raise ImageRefused("empty file")
    # catch_warnings edits process-wide filters, so two threads can race on them; the
    # explicit max_pixels check below does not depend on them and always holds.
    with warnings.catch_warnings():
        warnings.simplefilter("error", PILImage.DecompressionBombWarning)
        try:
            image = PILImage.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
        except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as error:
            raise ImageRefused(_bomb_reason(error, max_pixels)) from None
        except UnidentifiedImageError:
            raise ImageRefused(_describe_unknown(data)) from None
        except Exception:  # Pillow raises many types on malformed headers (struct.error, SyntaxError, ...)
            raise ImageRefused("file is truncated or corrupt") from None
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRefused(
                    f"image is {width}x{height} = {human_pixels(width * height)} pixels, "
                    f"over the {human_pixels(max_pixels)} pixel limit"
                )
            if width == 0 or height == 0:
                raise ImageRefused(f"image is {width}x{height}: no pixels")
            try:
                image.load()
                upright = ImageOps.exif_transpose(image)
                rgb = upright.convert("RGB")
            except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as error:
                raise ImageRefused(_bomb_reason(error, max_pixels)) from None
            except Exception:  # decoders fail with OSError ("truncated"), ValueError, SyntaxError, ...
                raise ImageRefused("file is truncated or corrupt") from None
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    png_bytes = buffer.getvalue()
    return DecodedImage(png_bytes=png_bytes, sha256=sha256_hex(png_bytes), width=rgb.width, height=rgb.height)


def _record_image(
    engine: Engine, project_id: int, decoded: DecodedImage, relative: str, name: str
) -> tuple[Image, bool]:
    """Insert the Image row unless the project has this hash already; returns (row, is_duplicate)."""
    lookup = select(Image).where(Image.project_id == project_id, Image.sha256 == decoded.sha256)
    try:
        with write_session(engine) as session:
            existing = session.exec(lookup).first()
            if existing is not None:
                return existing, True
            row = Image(
                project_id=project_id,
                sha256=decoded.sha256,
                width=decoded.width,
                height=decoded.height,
                split=split_for(decoded.sha256),
                path=relative,
                original_name=name,
            )
            session.add(row)
            session.flush()
            return row, False
    except IntegrityError:  # another process inserted the same hash between our read and insert
        with read_session(engine) as session:
            existing = session.exec(lookup).first()
        if existing is None:
            raise
        return existing, True


def ingest_bytes(
    engine: Engine,
    media_dir: Path | str,
    project_id: int,
    name: str,
    data: bytes,
    max_bytes: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> IngestOutcome:
    """Check, decode, store and record one file; never raises for bad content."""
    reason = size_refusal(len(data), max_bytes)
    if reason:
        return IngestOutcome(name, "refused", reason=reason)
    try:
        decoded = decode_to_png(data, max_pixels)
    except ImageRefused as refusal:
        return IngestOutcome(name, "refused", reason=refusal.reason)
    # The file goes first: a row never points at a missing file. A duplicate finds it
    # already there (content-addressed), so nothing new is written for it.
    relative = store_png(media_dir, decoded.png_bytes)
    row, duplicate = _record_image(engine, project_id, decoded, relative, name)
    return IngestOutcome(name, "duplicate" if duplicate else "accepted", row.id, row.width, row.height)


def read_upload_file(path: Path, max_bytes: int) -> bytes | str:
    """The bytes of `path`, or the refusal reason; the size is checked before reading."""
    try:
        reason = size_refusal(path.stat().st_size, max_bytes)
        return reason if reason else path.read_bytes()
    except OSError as error:
        return f"could not be read ({error.strerror or error})"


def require_project(engine: Engine, project_id: int) -> None:
    with read_session(engine) as session:
        if session.get(Project, project_id) is None:
            raise ValueError(f"project {project_id} does not exist")


def ingest_files(
    engine: Engine,
    media_dir: Path | str,
    project_id: int,
    files: Sequence[tuple[str, bytes] | Path | str],
    max_bytes: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> UploadReport:
    """Ingest (name, bytes) pairs or file paths, one at a time; see the module docstring."""
    require_project(engine, project_id)
    report = UploadReport()
    for item in files:
        if isinstance(item, (str, Path)):
            path = Path(item)
            name, data = path.name, read_upload_file(path, max_bytes)
            if isinstance(data, str):
                report.add(IngestOutcome(name, "refused", reason=data))
                continue
        else:
            name, data = item
        report.add(ingest_bytes(engine, media_dir, project_id, name, data, max_bytes, max_pixels))
    return report


def unsafe_member_name(name: str) -> bool:
    """True for zip names that are absolute, carry a drive letter, or contain a '..' part."""
    normalized = name.replace("\\", "/")
    return (
        normalized.startswith("/")
        or re.match(r"^[A-Za-z]:", normalized) is not None
        or ".." in PurePosixPath(normalized).parts
    )


def zip_members(
    archive: zipfile.ZipFile, max_total_bytes: int = DEFAULT_MAX_ZIP_TOTAL_BYTES
) -> tuple[list[zipfile.ZipInfo], list[tuple[str, str]]]:
    """The members to read, and (name, reason) for the refused ones.

    Directories, `__MACOSX/` and hidden files are ignored. Python's reader never
    yields more than a member's declared `file_size`, so bounding the declared
    sizes bounds what extraction can produce (a zip bomb is refused unread).
    """
    members: list[zipfile.ZipInfo] = []
    refused: list[tuple[str, str]] = []
    for info in archive.infolist():
        if info.is_dir():
            continue
        if unsafe_member_name(info.filename):
            refused.append((info.filename, "unsafe name in the zip (absolute or containing '..'); not extracted"))
            continue
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if any(part == "__MACOSX" or part.startswith(".") for part in parts):
            continue
        if info.flag_bits & 0x1:
            refused.append((info.filename, "encrypted zip member; not extracted"))
            continue
        members.append(info)
    total = sum(info.file_size for info in members)
    if total > max_total_bytes:
        reason = (
            f"the zip expands to {human_bytes(total)}, over the {human_bytes(max_total_bytes)} "
            "limit for one upload; nothing from it was stored"
        )
        return [], refused + [(info.filename, reason) for info in members]
    return members, refused


def read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> bytes | str:
    """The member's bytes, or the refusal reason; its declared size is checked before reading."""
    reason = size_refusal(info.file_size, max_bytes)
    if reason:
        return reason
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError, ValueError) as error:
        return f"could not be extracted from the zip ({error})"


def open_zip(zip_source: bytes | Path | str) -> zipfile.ZipFile:
    """A ZipFile over bytes or a path; ValueError('not a zip archive') otherwise."""
    try:
        return zipfile.ZipFile(io.BytesIO(zip_source) if isinstance(zip_source, bytes) else zip_source)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"not a zip archive ({error})") from None


def ingest_zip(
    engine: Engine,
    media_dir: Path | str,
    project_id: int,
    zip_source: bytes | Path | str,
    max_bytes: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_total_bytes: int = DEFAULT_MAX_ZIP_TOTAL_BYTES,
    zip_name: str = "upload.zip",
) -> UploadReport:
    """Every file member of the zip is one file of the upload (names are the member paths)."""
    require_project(engine, project_id)
    report = UploadReport()
    try:
        archive = open_zip(zip_source)
    except ValueError as error:
        report.refused.append((zip_name, str(error)))
        return report
    with archive:
        members, refused = zip_members(archive, max_total_bytes)
        report.refused.extend(refused)
        for info in members:
            data = read_zip_member(archive, info, max_bytes)
            if isinstance(data, str):
                report.add(IngestOutcome(info.filename, "refused", reason=data))
                continue
            report.add(ingest_bytes(engine, media_dir, project_id, info.filename, data, max_bytes, max_pixels))
    return report
