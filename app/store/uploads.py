"""Uploads: untrusted files -> checked, decoded, re-encoded PNGs + one Image row each.

Per file, in this order (reliability.md, "Uploads"):
1. size cap, checked before anything is read or decoded; empty files refused;
2. the name: control characters (NUL ...) or no visible character refused (names.py);
3. decode (image_decode.decode_to_png): format allow-list by content, pixel cap on
   the header, full decode, 16-bit / float rescaled by the image's own range, EXIF
   orientation applied, RGB, PNG; sha256 of the PNG bytes;
4. the PNG stored once per hash (media.store_png) and one Image row per project;
   the same pixels twice in a project are one image: the report names both files.
A refused file stores nothing and never stops the other files of the upload. A full
disk stops the upload: what was stored is kept and the files not tried are named.
"""
from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import select

from app.store.archive import (
    DEFAULT_MAX_ZIP_MEMBERS,
    DEFAULT_MAX_ZIP_TOTAL_BYTES,
    FileSource,
    human_bytes,
    open_zip,
    read_upload_file,
    size_refusal,
)
from app.store.db import read_session, write_session
from app.store.image_decode import DEFAULT_MAX_PIXELS, DecodedImage, ImageRefused, decode_to_png
from app.store.media import store_pngs
from app.store.models import Image, Project
from app.store.names import file_name_problem

__all__ = [
    "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_ZIP_TOTAL_BYTES", "DEFAULT_MAX_ZIP_MEMBERS", "VAL_PERCENT", "IngestOutcome",
    "UploadReport", "StorageFull", "ImageBatch", "human_bytes", "split_for", "check_file", "ingest_files",
    "ingest_zip", "require_project", "storage_full_reason",
]

VAL_PERCENT = 20  # about this share of images goes to "val", decided by the hash
Progress = Callable[[int, int], None]  # (files done, files in all)


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one file: status accepted | duplicate | refused. A duplicate names
    the stored image it has the same pixels as (`duplicate_of`)."""

    name: str
    status: str
    image_id: int | None = None
    width: int = 0
    height: int = 0
    reason: str = ""
    duplicate_of: str = ""


@dataclass
class UploadReport:
    accepted: list[tuple[str, int]] = field(default_factory=list)  # (name, image_id)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (name, name of the stored image it equals)
    image_ids: dict[str, int] = field(default_factory=dict)  # name -> image id, accepted and duplicates
    stopped: str = ""  # why the upload stopped early (a full disk), else ""
    not_tried: list[str] = field(default_factory=list)  # files never looked at because it stopped

    def add(self, outcome: IngestOutcome) -> None:
        if outcome.status == "refused":
            self.refused.append((outcome.name, outcome.reason))
            return
        self.image_ids[outcome.name] = outcome.image_id
        if outcome.status == "duplicate":
            self.duplicates.append((outcome.name, outcome.duplicate_of))
        else:
            self.accepted.append((outcome.name, outcome.image_id))

    def merge(self, other: "UploadReport") -> None:
        self.accepted += other.accepted
        self.refused += other.refused
        self.duplicates += other.duplicates
        self.image_ids.update(other.image_ids)
        self.stopped = self.stopped or other.stopped
        self.not_tried += other.not_tried

    def messages(self) -> list[str]:
        """One line per refused or duplicate file, naming it, then the early stop."""
        lines = [f"{name}: {reason}" for name, reason in self.refused]
        lines += [f"{name}: {duplicate_reason(name, other)}" for name, other in self.duplicates]
        if self.stopped:
            lines.append(f"stopped: {self.stopped}; not tried: {', '.join(self.not_tried) or 'none'}")
        return lines


def duplicate_reason(name: str, other: str) -> str:
    """Why a file was merged into a stored image, in words."""
    if other and other != name:
        return f"same pixels as {other}, already in this project: stored once, as {other}"
    return "already in this project (same pixels)"


class StorageFull(OSError):
    """The media folder's or the database's disk is full; `reason` says which, in words, and
    `names` the files of the batch being stored, which were not."""

    def __init__(self, reason: str, names: Sequence[str] = ()):
        super().__init__(errno.ENOSPC, reason)
        self.reason = reason
        self.names = list(names)


def storage_full_reason(error: BaseException) -> str | None:
    """A sentence when `error` means a full disk (media write, SQLite or PostgreSQL), else None."""
    if isinstance(error, StorageFull):
        return error.reason
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"the disk of the media folder is full ({error.strerror or error})"
    if isinstance(error, OperationalError):
        original = error.orig
        if "full" in str(original).lower() or getattr(original, "sqlstate", "") == "53100":
            return f"the database's disk is full ({str(original).splitlines()[0]})"
    return None


def split_for(sha256: str) -> str:
    """'val' for about VAL_PERCENT % of hashes, else 'train'; the same bytes always agree."""
    return "val" if int(sha256[:8], 16) % 100 < VAL_PERCENT else "train"


def _record_image(
    engine: Engine, project_id: int, decoded: DecodedImage, relative: str, name: str,
    split: str | None, coco_id: int | None,
) -> tuple[Image, bool]:
    """Insert the Image row unless the project has this hash already; returns (row, is_duplicate)."""
    lookup = select(Image).where(Image.project_id == project_id, Image.sha256 == decoded.sha256)
    try:
        with write_session(engine) as session:
            existing = session.exec(lookup).first()
            if existing is not None:
                return existing, True
            row = Image(
                project_id=project_id, sha256=decoded.sha256, width=decoded.width, height=decoded.height,
                split=split or split_for(decoded.sha256), path=relative, original_name=name, coco_id=coco_id,
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


@dataclass(frozen=True)
class _Waiting:
    name: str
    decoded: DecodedImage
    split: str | None
    coco_id: int | None
    on_stored: Callable[[IngestOutcome], None]


class ImageBatch:
    """Decoded images stored together: their files written, then made durable by one barrier
    (media.store_pngs), then their rows inserted in one transaction, so an import pays one
    sync and one commit per batch instead of three fsyncs per image. A file always becomes
    durable before the row that points at it. `on_stored(outcome)` is called per image once
    its row is committed (a duplicate names the stored image it equals). A batch holds at
    most BATCH_IMAGES images or BATCH_BYTES of PNG. A full disk raises StorageFull naming the
    batch's files: what earlier batches stored is kept."""

    BATCH_IMAGES = 100
    BATCH_BYTES = 64 * 1024 * 1024

    def __init__(self, engine: Engine, media_dir: Path | str, project_id: int):
        self.engine, self.media_dir, self.project_id = engine, media_dir, project_id
        self.waiting: list[_Waiting] = []
        self.waiting_bytes = 0

    def add(self, name: str, decoded: DecodedImage, on_stored: Callable[[IngestOutcome], None],
            split: str | None = None, coco_id: int | None = None) -> None:
        self.waiting.append(_Waiting(name, decoded, split, coco_id, on_stored))
        self.waiting_bytes += len(decoded.png_bytes)
        if len(self.waiting) >= self.BATCH_IMAGES or self.waiting_bytes >= self.BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        waiting, self.waiting, self.waiting_bytes = self.waiting, [], 0
        if not waiting:
            return
        try:
            relatives = store_pngs(self.media_dir, [item.decoded.png_bytes for item in waiting])
            try:
                outcomes = self._record(waiting, relatives)
            except IntegrityError:  # another process inserted one of these hashes meanwhile: one by one
                outcomes = [self._outcome(item, *_record_image(self.engine, self.project_id, item.decoded, relative,
                                                               item.name, item.split, item.coco_id))
                            for item, relative in zip(waiting, relatives)]
        except (OSError, OperationalError) as error:
            reason = storage_full_reason(error)
            if reason is None:
                raise
            raise StorageFull(reason, [item.name for item in waiting]) from error
        for item, outcome in zip(waiting, outcomes):
            item.on_stored(outcome)

    @staticmethod
    def _outcome(item: _Waiting, row: Image, duplicate: bool) -> IngestOutcome:
        if duplicate:
            return IngestOutcome(item.name, "duplicate", row.id, row.width, row.height, duplicate_of=row.original_name)
        return IngestOutcome(item.name, "accepted", row.id, row.width, row.height)

    def _record(self, waiting: list[_Waiting], relatives: list[str]) -> list[IngestOutcome]:
        hashes = sorted({item.decoded.sha256 for item in waiting})
        with write_session(self.engine) as session:
            stored = {row.sha256: row for row in session.exec(
                select(Image).where(Image.project_id == self.project_id, Image.sha256.in_(hashes)))}
            results = []
            for item, relative in zip(waiting, relatives):
                row = stored.get(item.decoded.sha256)
                if row is not None:
                    results.append((item, row, True))
                    continue
                decoded = item.decoded
                row = Image(project_id=self.project_id, sha256=decoded.sha256, width=decoded.width,
                            height=decoded.height, split=item.split or split_for(decoded.sha256), path=relative,
                            original_name=item.name, coco_id=item.coco_id)
                session.add(row)
                session.flush()
                stored[decoded.sha256] = row
                results.append((item, row, False))
            return [self._outcome(item, row, duplicate) for item, row, duplicate in results]


def check_file(name: str, data: bytes, max_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage | str:
    """The decoded image, or the reason the file is refused (size, name, content)."""
    reason = size_refusal(len(data), max_bytes) or file_name_problem(name)
    if reason:
        return reason
    try:
        return decode_to_png(data, max_pixels)
    except ImageRefused as refusal:
        return refusal.reason


def require_project(engine: Engine, project_id: int) -> None:
    with read_session(engine) as session:
        if session.get(Project, project_id) is None:
            raise ValueError(f"project {project_id} does not exist")


Loader = Callable[[], "bytes | str"]  # reads one file: its bytes, or why it cannot be read


def ingest_items(
    engine: Engine, media_dir: Path | str, project_id: int, items: Sequence[tuple[str, Loader]],
    max_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS, on_progress: Progress | None = None,
    report: UploadReport | None = None,
) -> UploadReport:
    """Ingest (name, loader) items: read and check one at a time, store in batches (ImageBatch);
    a full disk stops the upload and names the files not stored."""
    report = report if report is not None else UploadReport()
    batch = ImageBatch(engine, media_dir, project_id)
    try:
        for index, (name, load) in enumerate(items):
            data = load()
            checked = data if isinstance(data, str) else check_file(name, data, max_bytes, max_pixels)
            if isinstance(checked, str):
                report.add(IngestOutcome(name, "refused", reason=checked))
            else:
                try:
                    batch.add(name, checked, report.add)
                except StorageFull as full:
                    full.names += [later for later, _ in items[index + 1:]]
                    raise
            if on_progress is not None:
                on_progress(index + 1, len(items))
        batch.flush()
    except StorageFull as full:
        report.stopped = f"{full.reason} while storing {full.names[0]}; what was stored before it is kept"
        report.not_tried += full.names
    return report


def ingest_files(
    engine: Engine, media_dir: Path | str, project_id: int, files: Sequence[tuple[str, bytes] | Path | str],
    max_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS, on_progress: Progress | None = None,
) -> UploadReport:
    """Ingest (name, bytes) pairs or file paths, one at a time; see the module docstring."""
    require_project(engine, project_id)
    items: list[tuple[str, Loader]] = []
    for item in files:
        if isinstance(item, (str, Path)):
            path = Path(item)
            items.append((path.name, lambda path=path: read_upload_file(path, max_bytes)))
        else:
            items.append((item[0], lambda data=item[1]: data))
    return ingest_items(engine, media_dir, project_id, items, max_bytes, max_pixels, on_progress)


def ingest_zip(
    engine: Engine, media_dir: Path | str, project_id: int, zip_source: bytes | Path | str, max_bytes: int,
    max_pixels: int = DEFAULT_MAX_PIXELS, max_total_bytes: int = DEFAULT_MAX_ZIP_TOTAL_BYTES,
    zip_name: str = "upload.zip", max_members: int = DEFAULT_MAX_ZIP_MEMBERS, on_progress: Progress | None = None,
) -> UploadReport:
    """Every file member of the zip is one file of the upload (names are the member paths)."""
    require_project(engine, project_id)
    report = UploadReport()
    try:
        source = FileSource.from_zip(open_zip(zip_source), max_bytes, max_total_bytes, max_members)
    except ValueError as error:
        report.refused.append((zip_name, str(error)))
        return report
    with source:
        report.refused.extend(source.refused)
        items = [(name, lambda name=name: source.read(name)) for name in source.names]
        return ingest_items(engine, media_dir, project_id, items, max_bytes, max_pixels, on_progress, report)


