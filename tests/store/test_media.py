"""The content-addressed media store and its path guard (downloads go through media_path)."""
from __future__ import annotations

import hashlib
import os
from urllib.parse import unquote

import pytest

from app.store.media import MediaPathError, media_path, store_png


@pytest.fixture
def media_dir(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    return folder


def test_store_png_is_content_addressed_atomic_and_written_once(media_dir):
    data = b"\x89PNG\r\n\x1a\n" + b"pretend pixels"
    digest = hashlib.sha256(data).hexdigest()

    relative = store_png(media_dir, data)

    assert relative == f"images/{digest[:2]}/{digest}.png"
    stored = media_dir / relative
    assert stored.read_bytes() == data
    assert [p.name for p in stored.parent.iterdir()] == [stored.name], "no temp file left behind"
    os.utime(stored, (1_000_000, 1_000_000))
    assert store_png(media_dir, data) == relative
    assert stored.stat().st_mtime == 1_000_000, "a second store of the same bytes must not rewrite the file"


def test_media_path_resolves_names_inside_the_root(media_dir):
    relative = store_png(media_dir, b"abc")
    assert media_path(media_dir, relative) == (media_dir / relative).resolve()
    # a literal (undecoded) percent name is just a file name inside the root
    assert media_path(media_dir, "%2e%2e%2fetc%2fpasswd").parent == media_dir.resolve()


@pytest.mark.parametrize(
    "name, reason",
    [
        ("../../etc/passwd", "'..'"),
        (unquote("%2e%2e%2f%2e%2e%2fetc%2fpasswd"), "'..'"),
        (unquote("images%2f..%2f..%2fsecret"), "'..'"),
        ("/etc/passwd", "absolute"),
        ("..\\..\\etc\\passwd", "backslash"),
        ("images/\x00.png", "NUL"),
        ("", "empty"),
    ],
)
def test_media_path_refuses_names_that_leave_the_root(media_dir, name, reason):
    with pytest.raises(MediaPathError, match=reason):
        media_path(media_dir, name)


def test_media_path_refuses_symlinks_pointing_out(media_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (media_dir / "leak.png").symlink_to(secret)
    (media_dir / "outside").symlink_to(tmp_path)
    (media_dir / "inside.png").symlink_to(media_dir / store_png(media_dir, b"x"))

    with pytest.raises(MediaPathError, match="outside the media folder"):
        media_path(media_dir, "leak.png")
    with pytest.raises(MediaPathError, match="outside the media folder"):
        media_path(media_dir, "outside/secret.txt")
    assert media_path(media_dir, "inside.png").read_bytes() == b"x"
