"""app.label_studio_rle and app.label_studio_backend without a server: brush masks Label Studio
can read back, the labelling config read, task images only from Label Studio, regions per label."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from app.label_studio_backend import LabelStudioError, parse_controls, task_image, task_prediction
from app.label_studio_rle import encode_brush_rle
from app.settings import Settings
from sam3_lora.predict import Instance
from tests.label_studio_support import brush_mask, decode_brush_rle, start_label_studio_stub

CONFIG = """<View>
  <Image name="photo" value="$image"/>
  <BrushLabels name="mask" toName="photo"><Label value="crack"/><Label value="rust stain"/></BrushLabels>
  <RectangleLabels name="box" toName="photo"><Label value="crack"/></RectangleLabels>
  <Choices name="quality" toName="photo"><Choice value="good"/></Choices>
</View>"""


def png_bytes(width: int = 40, height: int = 30) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("shape, seed", [((30, 40), 0), ((1, 1), 1), ((300, 300), 2)])
def test_brush_rle_decodes_to_the_mask(shape, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) > 0.7
    mask[: shape[0] // 2] = True  # long runs too (over 2^16 values when the image is big)
    rle = encode_brush_rle(mask)
    assert all(0 <= value <= 255 for value in rle)
    values = decode_brush_rle(rle)
    assert values.size == mask.size * 4 and set(np.unique(values)) <= {0, 255}
    assert np.array_equal(brush_mask(rle, shape[1], shape[0]), mask)


def test_the_config_gives_the_brush_and_box_controls_with_their_phrases():
    controls = parse_controls(CONFIG)
    assert [(c.from_name, c.to_name, c.result_type, c.data_key, c.labels) for c in controls] == [
        ("mask", "photo", "brushlabels", "image", ("crack", "rust stain")),
        ("box", "photo", "rectanglelabels", "image", ("crack",))]
    with pytest.raises(LabelStudioError, match="no <BrushLabels> or <RectangleLabels>"):
        parse_controls('<View><Image name="i" value="$image"/><Choices name="c" toName="i"/></View>')
    with pytest.raises(LabelStudioError, match="not XML"):
        parse_controls("<View>")


def test_task_images_come_from_a_data_uri_or_label_studio_only(tmp_path):
    url, server, asked = start_label_studio_stub({"/data/upload/1/a.png": png_bytes()}, token="secret")
    try:
        settings = Settings(DATA_DIR=tmp_path, LABEL_STUDIO_URL=url, LABEL_STUDIO_API_KEY="secret")
        inline = "data:image/png;base64," + base64.b64encode(png_bytes(20, 10)).decode()
        assert task_image({"id": 1, "data": {"image": inline}}, "image", settings).size == (20, 10)
        assert task_image({"id": 2, "data": {"image": "/data/upload/1/a.png"}}, "image", settings).size == (40, 30)
        assert task_image({"id": 3, "data": {"image": f"{url}/data/upload/1/a.png"}}, "image", settings).size == (40, 30)
        with pytest.raises(LabelStudioError, match="task 4: .*not at LABEL_STUDIO_URL"):
            task_image({"id": 4, "data": {"image": "http://169.254.169.254/latest/meta-data"}}, "image", settings)
        with pytest.raises(LabelStudioError, match="task 5: .*answered HTTP 401"):
            task_image({"id": 5, "data": {"image": "/data/upload/1/a.png"}}, "image",
                       Settings(DATA_DIR=tmp_path, LABEL_STUDIO_URL=url, LABEL_STUDIO_API_KEY="wrong"))
        with pytest.raises(LabelStudioError, match="task 6: image refused"):
            task_image({"id": 6, "data": {"image": "data:image/png;base64," + base64.b64encode(b"<html>").decode()}},
                       "image", settings)
        with pytest.raises(LabelStudioError, match="LABEL_STUDIO_URL is not set"):
            task_image({"id": 7, "data": {"image": "/data/upload/1/a.png"}}, "image", Settings(DATA_DIR=tmp_path))
        assert asked == ["/data/upload/1/a.png"] * 3  # the metadata address was never asked
    finally:
        server.shutdown()


def test_a_prediction_has_one_region_per_instance_and_label(tmp_path):
    settings = Settings(DATA_DIR=tmp_path)
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:15, 10:30] = True
    found = Instance(mask=mask, box=(10.0, 5.0, 30.0, 15.0), score=0.8, phrase="crack")

    def find(image, phrases):
        return [[found] if phrase == "crack" else [] for phrase in phrases]

    task = {"id": 1, "data": {"image": "data:image/png;base64," + base64.b64encode(png_bytes()).decode()}}
    prediction = task_prediction(parse_controls(CONFIG), task, settings, find, "v1")
    assert prediction["model_version"] == "v1" and prediction["score"] == pytest.approx(0.8)
    brush, box = prediction["result"]
    assert (brush["type"], brush["from_name"], brush["to_name"], brush["value"]["brushlabels"]) == \
        ("brushlabels", "mask", "photo", ["crack"])
    assert (brush["original_width"], brush["original_height"]) == (40, 30)
    assert np.array_equal(brush_mask(brush["value"]["rle"], 40, 30), mask)
    assert box["value"] == {"x": 25.0, "y": pytest.approx(100 / 6), "width": 50.0, "height": pytest.approx(100 / 3),
                            "rotation": 0, "rectanglelabels": ["crack"]}
    missing = task_prediction(parse_controls(CONFIG), {"id": 2, "data": {}}, settings, find, "v1")
    assert missing == {"result": [], "score": 0.0, "model_version": "v1"}
