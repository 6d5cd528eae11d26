"""16-bit and float images are rescaled by their own range (not clipped to white or black);
non-finite pixels are refused with how to fix them."""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image as PILImage

from app.store.image_decode import ImageRefused, decode_to_png
from app.store.uploads import ingest_files
from tests.store.corpus_support import CORPUS, MB
from tests.store.test_uploads import make_project


def decoded_pixels(data: bytes) -> np.ndarray:
    with PILImage.open(io.BytesIO(decode_to_png(data).png_bytes)) as image:
        return np.asarray(image)


@pytest.mark.parametrize("name, mode", [("gray16.png", ("I;16", "I")), ("float32.tif", ("F",))])
def test_wide_images_keep_their_contrast(name, mode):
    data = (CORPUS / "wide" / name).read_bytes()
    with PILImage.open(io.BytesIO(data)) as original:
        assert original.mode in mode
        values = np.asarray(original, dtype=np.float64)
    pixels = decoded_pixels(data)
    assert pixels.shape == (32, 48, 3) and (pixels[..., 0] == pixels[..., 1]).all()
    expected = np.rint((values - values.min()) * 255 / (values.max() - values.min()))
    assert np.array_equal(pixels[..., 0], expected.astype(np.uint8))
    assert (pixels[..., 0] == 255).mean() < 0.2 and (pixels[..., 0] == 0).mean() < 0.1
    assert decode_to_png(data).rescaled_from in mode


def test_non_finite_float_pixels_are_refused_with_the_fix():
    values = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    values[3, 3] = np.nan
    buffer = io.BytesIO()
    PILImage.fromarray(values, mode="F").save(buffer, format="TIFF")
    with pytest.raises(ImageRefused, match=r"F image has 1 NaN or infinite pixel\(s\); .*numpy.nan_to_num"):
        decode_to_png(buffer.getvalue())


def test_a_constant_16_bit_image_is_black_not_an_error():
    buffer = io.BytesIO()
    PILImage.fromarray(np.full((8, 8), 3000, dtype=np.uint16)).save(buffer, format="PNG")
    assert not decoded_pixels(buffer.getvalue()).any()


def test_uploads_store_the_rescaled_pixels(engine, tmp_path):
    store = SimpleNamespace(media=tmp_path / "media", project=make_project(engine, "wide"))
    report = ingest_files(engine, store.media, store.project, [CORPUS / "wide" / "gray16.png",
                                                               CORPUS / "wide" / "float32.tif"], MB)
    assert [name for name, _ in report.accepted] == ["gray16.png", "float32.tif"]
