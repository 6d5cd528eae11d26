"""Uploads with real hostile files: each is refused with a reason naming it, nothing of
it is stored, and the good files of the same upload are kept (reliability.md, Uploads)."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlmodel import select

from app.store.db import read_session, write_session
from app.store.models import Image, Project
from app.store.uploads import ingest_files, ingest_zip, split_for

REPO_ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024


# ---------------------------------------------------------------- fixtures and files

def make_project(engine, name: str) -> int:
    with write_session(engine) as session:
        project = Project(name=name)
        session.add(project)
        session.flush()
        return project.id


@pytest.fixture
def store(engine, tmp_path):
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    yield SimpleNamespace(engine=engine, media_dir=media_dir, project_id=make_project(engine, "uploads"))


def image_bytes(fmt: str, size=(32, 24), seed: int = 0, **save_args) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def black_png(width: int, height: int) -> bytes:
    """A real 1-bit all-black PNG, built row by row so the test never holds the pixels."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte "none" + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    return black_png(20_000, 20_000)  # 400M pixels; about 60 KB on disk


def stored_state(store) -> tuple[int, list[str]]:
    with read_session(store.engine) as session:
        rows = len(session.exec(select(Image)).all())
    files = sorted(str(p.relative_to(store.media_dir)) for p in store.media_dir.rglob("*") if p.is_file())
    return rows, files


# ---------------------------------------------------------------- tests

def test_hostile_files_are_refused_with_reasons_and_the_good_ones_kept(store, bomb_png):
    truncated_jpeg = image_bytes("JPEG", (256, 256))[:3000]
    files = [
        ("good.png", image_bytes("PNG", seed=1)),
        ("bomb.png", bomb_png),
        ("big10k.png", black_png(10_000, 10_000)),
        ("truncated.jpg", truncated_jpeg),
        ("empty.png", b""),
        ("page.png", b"<!DOCTYPE html><html><body>404 not found</body></html>"),
        ("vector.svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>'),
        ("anim.gif", image_bytes("GIF", seed=2)),
        ("huge.jpg", os.urandom(3 * MB)),
        ("good.jpg", image_bytes("JPEG", seed=3)),
    ]

    report = ingest_files(store.engine, store.media_dir, store.project_id, files, max_bytes=2 * MB)

    refused = dict(report.refused)
    assert [name for name, _ in report.accepted] == ["good.png", "good.jpg"]
    assert refused == {
        "bomb.png": "image is 400M pixels, over the 50M pixel limit",
        "big10k.png": "image is 100M pixels, over the 50M pixel limit",
        "truncated.jpg": "file is truncated or corrupt",
        "empty.png": "empty file",
        "page.png": "not an image: looks like HTML",
        "vector.svg": "not an image: looks like SVG (vector images are not accepted)",
        "anim.gif": "image format GIF is not accepted",
        "huge.jpg": "file is 3.0 MB, over the 2.0 MB limit",
    }
    assert "bomb.png: image is 400M pixels, over the 50M pixel limit" in report.messages()
    rows, files_on_disk = stored_state(store)
    assert rows == 2 and len(files_on_disk) == 2, "only the two good images are stored"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF"])
def test_each_allowed_format_is_stored_as_rgb_png(store, fmt):
    report = ingest_files(store.engine, store.media_dir, store.project_id, [(f"x.{fmt.lower()}", image_bytes(fmt))], MB)
    (name, image_id), = report.accepted
    with read_session(store.engine) as session:
        row = session.get(Image, image_id)
    with PILImage.open(store.media_dir / row.path) as stored:
        assert (stored.format, stored.mode, stored.size) == ("PNG", "RGB", (32, 24))
    assert (row.width, row.height, row.original_name) == (32, 24, f"x.{fmt.lower()}")


def test_own_pixel_cap_names_the_size(store):
    report = ingest_files(store.engine, store.media_dir, store.project_id, [("wide.png", image_bytes("PNG", (50, 40)))],
                          MB, max_pixels=1000)
    assert report.refused == [("wide.png", "image is 50x40 = 2,000 pixels, over the 1,000 pixel limit")]
    assert stored_state(store) == (0, [])


def test_exif_orientation_is_applied(store):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red, right half blue
    pixels[:, 20:] = (0, 0, 255)
    exif = PILImage.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif)

    (_, image_id), = ingest_files(store.engine, store.media_dir, store.project_id, [("phone.jpg", buffer.getvalue())], MB).accepted

    with read_session(store.engine) as session:
        row = session.get(Image, image_id)
    with PILImage.open(store.media_dir / row.path) as stored:
        upright = np.asarray(stored)
    assert (row.width, row.height) == (20, 40)
    assert upright[5, 10, 0] > 200 and upright[5, 10, 2] < 60, "red is on top after the rotation"
    assert upright[35, 10, 2] > 200 and upright[35, 10, 0] < 60, "blue is at the bottom"


def test_the_same_image_twice_is_a_duplicate_and_stored_once(store):
    picture = image_bytes("PNG", seed=7)
    first = ingest_files(store.engine, store.media_dir, store.project_id, [("a.png", picture), ("copy.png", picture)], MB)
    again = ingest_files(store.engine, store.media_dir, store.project_id, [("b.png", picture)], MB)
    other_project = make_project(store.engine, "other")
    elsewhere = ingest_files(store.engine, store.media_dir, other_project, [("c.png", picture)], MB)

    assert [n for n, _ in first.accepted] == ["a.png"] and first.duplicates == [("copy.png", "a.png")]
    assert again.accepted == [] and again.duplicates == [("b.png", "a.png")]
    assert "copy.png: same pixels as a.png, already in this project: stored once, as a.png" in first.messages()
    assert again.image_ids["b.png"] == first.image_ids["a.png"]
    with read_session(store.engine) as session:
        rows = session.exec(select(Image).order_by(Image.id)).all()
    assert [(r.project_id, r.original_name) for r in rows] == [(store.project_id, "a.png"), (other_project, "c.png")]
    assert rows[0].path == rows[1].path and rows[0].split == rows[1].split == split_for(rows[0].sha256)
    assert elsewhere.accepted == [("c.png", rows[1].id)]
    assert len(stored_state(store)[1]) == 1


def test_split_is_deterministic_and_about_one_fifth_val():
    hashes = [os.urandom(32).hex() for _ in range(2000)]
    val_share = sum(split_for(h) == "val" for h in hashes) / len(hashes)
    assert 0.16 < val_share < 0.24
    assert all(split_for(h) == split_for(h) for h in hashes[:50])


def test_file_paths_are_size_checked_before_reading(store, tmp_path):
    sparse = tmp_path / "scan.tif"
    with open(sparse, "wb") as handle:
        handle.truncate(310 * MB)  # sparse: no disk used, but st_size says 310 MB
    good = tmp_path / "ok.png"
    good.write_bytes(image_bytes("PNG"))

    tracemalloc.start()
    report = ingest_files(store.engine, store.media_dir, store.project_id, [sparse, good], max_bytes=200 * MB)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert report.refused == [("scan.tif", "file is 310 MB, over the 200 MB limit")]
    assert [n for n, _ in report.accepted] == ["ok.png"]
    assert peak < 20 * MB, f"the 310 MB file must not be read, peak was {peak / MB:.0f} MB"


CHILD = """
import json, resource, sys
from pathlib import Path
from sqlmodel import SQLModel
from app.store.db import make_engine, write_session
from app.store.models import Project
from app.store.uploads import ingest_files
db, media, bomb, big = sys.argv[1:5]
engine = make_engine("sqlite:///" + db)
SQLModel.metadata.create_all(engine)
with write_session(engine) as session:
    session.add(Project(id=1, name="p"))
files = [("bomb.png", Path(bomb).read_bytes()), ("big10k.png", Path(big).read_bytes())]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = ingest_files(engine, media, 1, files, max_bytes=200 * 1024 * 1024)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kb": after - before, "refused": report.refused}))
"""


def test_memory_stays_flat_for_decompression_bombs(tmp_path, bomb_png):
    """In a fresh process, so its peak RSS is not hidden by an earlier peak of this one."""
    (tmp_path / "bomb.png").write_bytes(bomb_png)
    (tmp_path / "big.png").write_bytes(black_png(10_000, 10_000))
    (tmp_path / "media").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "s.db"), str(tmp_path / "media"),
         str(tmp_path / "bomb.png"), str(tmp_path / "big.png")],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=True,
    )
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert [name for name, _ in outcome["refused"]] == ["bomb.png", "big10k.png"]
    # decoding would take 400 MB (mode "1" keeps a byte per pixel) and 1.6 GB as RGB
    assert outcome["grew_kb"] < 50 * 1024, f"peak RSS grew by {outcome['grew_kb'] / 1024:.0f} MB"
    assert not any(p.is_file() for p in (tmp_path / "media").rglob("*"))


def make_zip(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_upload_refuses_unsafe_names_and_ignores_metadata(store):
    archive = make_zip([
        ("photos/", b""),
        ("photos/a.png", image_bytes("PNG", seed=1)),
        ("photos/sub/b.jpg", image_bytes("JPEG", seed=2)),
        ("../evil.png", image_bytes("PNG", seed=3)),
        ("/abs.png", image_bytes("PNG", seed=4)),
        ("C:/windows/c.png", image_bytes("PNG", seed=5)),
        ("__MACOSX/photos/._a.png", b"\x00\x05\x16\x07 resource fork"),
        ("photos/.DS_Store", b"\x00\x00\x00\x01Bud1"),
        ("notes.txt", b"labels go here"),
        ("broken.jpg", image_bytes("JPEG", (256, 256))[:2000]),
    ])

    report = ingest_zip(store.engine, store.media_dir, store.project_id, archive, max_bytes=MB)

    assert [n for n, _ in report.accepted] == ["photos/a.png", "photos/sub/b.jpg"]
    refused = dict(report.refused)
    assert set(refused) == {"../evil.png", "/abs.png", "C:/windows/c.png", "notes.txt", "broken.jpg"}
    assert refused["../evil.png"].startswith("unsafe name in the zip")
    assert refused["notes.txt"] == "not an image: looks like text"
    assert refused["broken.jpg"] == "file is truncated or corrupt"
    rows, files = stored_state(store)
    assert rows == 2 and len(files) == 2


def test_zip_uncompressed_total_and_member_size_are_bounded(store):
    bomb = make_zip([("a.png", image_bytes("PNG")), ("zeros.png", b"\x00" * (5 * MB))])
    assert len(bomb) < 100_000

    whole = ingest_zip(store.engine, store.media_dir, store.project_id, bomb, max_bytes=10 * MB, max_total_bytes=2 * MB,
                       zip_name="bomb.zip")
    assert whole.accepted == [] and len(whole.refused) == 1
    assert whole.refused[0] == ("bomb.zip", "the zip expands to 5.0 MB, over the 2.0 MB limit for one upload; "
                                            "nothing from it was stored")
    assert stored_state(store) == (0, [])

    per_member = ingest_zip(store.engine, store.media_dir, store.project_id, bomb, max_bytes=MB)
    assert [n for n, _ in per_member.accepted] == ["a.png"]
    assert per_member.refused == [("zeros.png", "file is 5.0 MB, over the 1.0 MB limit")]


def test_not_a_zip_is_reported(store):
    report = ingest_zip(store.engine, store.media_dir, store.project_id, b"<html>", MB, zip_name="photos.zip")
    assert report.refused[0][0] == "photos.zip" and report.refused[0][1].startswith("not a zip archive")


def test_unknown_project_is_an_error(store):
    with pytest.raises(ValueError, match="project 999 does not exist"):
        ingest_files(store.engine, store.media_dir, 999, [("a.png", image_bytes("PNG"))], MB)
