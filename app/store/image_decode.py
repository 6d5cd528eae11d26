"""Untrusted image bytes -> 8-bit RGB PNG bytes, checked (reliability.md, "Uploads").

In this order: format allow-list by content (`Image.open(formats=ALLOWED_FORMATS)`);
pixel cap on the header size, before any pixel is decoded (Pillow's
DecompressionBombWarning is an error too); full decode (`load()`: a truncated JPEG
only fails there); bit depth; EXIF orientation; RGB; PNG.

Bit depth: 16-bit, 32-bit integer and float images (Pillow modes I;16*, I, F) are
rescaled by the image's own range, v8 = round(255 * (v - min) / (max - min)) over the
finite pixels (a constant image becomes 0), so a 12-bit camera frame or a float
TIFF keeps its contrast instead of saturating to 255 or going black. Non-finite
pixels (NaN, inf) are refused with how to fix them.

Orientation (the one rule, for uploads and imports alike): the stored pixels are
upright, i.e. the EXIF orientation is applied (`to_upright`). The
decoded result keeps the orientation tag and the raw (as-encoded) size so that an
importer can map annotations drawn on the raw pixels (app.store.orientation).
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from app.store.media import sha256_hex

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
DEFAULT_MAX_PIXELS = 50_000_000
PNG_COMPRESS_LEVEL = 6  # changing it changes the PNG bytes, hence the hashes used for dedup
EXIF_ORIENTATION_TAG = 0x0112
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # rescaled by their own range

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
    """The stored form: upright 8-bit RGB PNG bytes, their sha256 and size; plus what the
    file said: EXIF orientation (1 = none) and its raw size before the orientation."""

    png_bytes: bytes
    sha256: str
    width: int
    height: int
    orientation: int = 1
    raw_width: int = 0
    raw_height: int = 0
    rescaled_from: str = ""  # the wide mode rescaled to 8 bits ("I;16", "F", ...), else ""


def human_pixels(num_pixels: int) -> str:
    """400_000_000 -> '400M'; 20_000 -> '20,000'."""
    return f"{round(num_pixels / 1e6, 1):g}M" if num_pixels >= 1_000_000 else f"{num_pixels:,}"


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


def rescale_to_8_bit(image: PILImage.Image) -> PILImage.Image:
    """A 16-bit / 32-bit / float single-channel image -> mode L by its own range (see module doc)."""
    values = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        bad = int((~finite).sum())
        raise ImageRefused(
            f"{image.mode} image has {bad} NaN or infinite pixel(s); replace them with a number "
            "(e.g. numpy.nan_to_num) and upload again"
        )
    low, high = float(values.min()), float(values.max())
    if high <= low:
        scaled = np.zeros(values.shape, dtype=np.uint8)
    else:
        scaled = np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)
    return PILImage.fromarray(scaled, mode="L")


# EXIF orientation -> the transpose that makes the pixels upright (EXIF 2.32, section 4.6.4;
# the same table as PIL.ImageOps.exif_transpose).
UPRIGHT_TRANSPOSE = {
    2: PILImage.Transpose.FLIP_LEFT_RIGHT, 3: PILImage.Transpose.ROTATE_180, 4: PILImage.Transpose.FLIP_TOP_BOTTOM,
    5: PILImage.Transpose.TRANSPOSE, 6: PILImage.Transpose.ROTATE_270, 7: PILImage.Transpose.TRANSVERSE,
    8: PILImage.Transpose.ROTATE_90,
}


def to_upright(image: PILImage.Image, orientation: int) -> PILImage.Image:
    """`image` (any mode) turned as EXIF `orientation` says; orientation 1 returns it unchanged."""
    method = UPRIGHT_TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


def exif_orientation(image: PILImage.Image) -> int:
    """The EXIF orientation tag 1..8 (1 when absent or out of range)."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block is no orientation
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _open(data: bytes, max_pixels: int) -> PILImage.Image:
    try:
        return PILImage.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as error:
        raise ImageRefused(_bomb_reason(error, max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageRefused(_describe_unknown(data)) from None
    except Exception:  # Pillow raises many types on malformed headers (struct.error, SyntaxError, ...)
        raise ImageRefused("file is truncated or corrupt") from None


def decode_to_png(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Untrusted bytes -> DecodedImage; ImageRefused on any problem.

    `max_pixels` is effectively min(max_pixels, PIL.Image.MAX_IMAGE_PIXELS), since
    Pillow's own bomb warning is turned into an error as well.
    """
    if not data:
        raise ImageRefused("empty file")
    # catch_warnings edits process-wide filters, so two threads can race on them; the
    # explicit max_pixels check below does not depend on them and always holds.
    with warnings.catch_warnings():
        warnings.simplefilter("error", PILImage.DecompressionBombWarning)
        image = _open(data, max_pixels)
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
                orientation = exif_orientation(image)
                wide_mode = image.mode if image.mode in _WIDE_MODES else ""
                upright = to_upright(rescale_to_8_bit(image) if wide_mode else image, orientation)
                rgb = upright.convert("RGB")
            except ImageRefused:
                raise
            except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as error:
                raise ImageRefused(_bomb_reason(error, max_pixels)) from None
            except Exception:  # decoders fail with OSError ("truncated"), ValueError, SyntaxError, ...
                raise ImageRefused("file is truncated or corrupt") from None
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    png_bytes = buffer.getvalue()
    return DecodedImage(png_bytes, sha256_hex(png_bytes), rgb.width, rgb.height, orientation, width, height, wide_mode)
