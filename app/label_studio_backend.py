"""The studio as a Label Studio ML backend: its labelling config and tasks in, SAM3 predictions out.

Label Studio (label-studio-ml-backend's contract) calls, under the URL a project connects to:
  GET  /health   -> {"status": "UP"}
  POST /setup    {project, schema, hostname, access_token, ...} -> {"model_version": ...}
  POST /predict  {tasks: [{id, data: {<key>: image url}}], label_config, project, params}
                 -> {"results": [one prediction per task: {"result": [...], "score", "model_version"}]}

From the labelling config (`parse_controls`), every <BrushLabels> or <RectangleLabels> tied
(toName) to an <Image value="$key"> is a control; each of its <Label value="crack"/> values is
a noun phrase SAM3 is prompted with. A found instance becomes a region of that control:
a brush mask (app.label_studio_rle) or a box in percent of the image, with its score.

Task images: a data: URI is decoded as is; a URL relative to Label Studio (/data/upload/...,
/tasks/<id>/presign/...) or an absolute one under LABEL_STUDIO_URL is fetched from there with
LABEL_STUDIO_API_KEY; any other URL is refused (the studio fetches from nowhere else). Every
image goes through the upload checks (app.store.image_decode). A task that cannot be read gets
an empty prediction, and the reason is logged with its id; the other tasks are predicted.
"""
from __future__ import annotations

import base64
import io
import logging
import uuid
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image

from app.label_studio_rle import encode_brush_rle
from app.settings import Settings
from app.store.image_decode import ImageRefused, decode_to_png
from sam3_lora.predict import Instance

logger = logging.getLogger(__name__)

CONTROL_TYPES = {"BrushLabels": "brushlabels", "RectangleLabels": "rectanglelabels"}
MAX_CONFIG_BYTES = 200_000
FETCH_TIMEOUT_S = 30.0


class LabelStudioError(ValueError):
    """A labelling config or task the backend cannot use; the message names it and the reason."""


@dataclass(frozen=True)
class Control:
    """One control tag of the labelling config: <BrushLabels name=from_name toName=to_name> over <Image value=$data_key>."""

    from_name: str
    to_name: str
    result_type: str  # "brushlabels" | "rectanglelabels"
    data_key: str
    labels: tuple[str, ...]


def parse_controls(label_config: str) -> list[Control]:
    """The brush and rectangle controls of a labelling config; LabelStudioError when there is none."""
    if not label_config or len(label_config) > MAX_CONFIG_BYTES:
        raise LabelStudioError(f"label_config is empty or over {MAX_CONFIG_BYTES} characters")
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as error:
        raise LabelStudioError(f"label_config is not XML: {error}") from None
    images = {tag.get("name"): (tag.get("value") or "").lstrip("$") for tag in root.iter("Image")}
    controls = []
    for tag in root.iter():
        if tag.tag not in CONTROL_TYPES:
            continue
        to_name = tag.get("toName", "")
        labels = tuple(label.get("value") for label in tag.iter("Label") if (label.get("value") or "").strip())
        if to_name in images and labels:
            controls.append(Control(tag.get("name", ""), to_name, CONTROL_TYPES[tag.tag], images[to_name], labels))
    if not controls:
        raise LabelStudioError("label_config has no <BrushLabels> or <RectangleLabels> with <Label> values over an "
                               "<Image>; SAM3 predicts masks and boxes of the labels' phrases")
    return controls


def _fetch(url: str, settings: Settings) -> bytes:
    """Bytes of a task image at Label Studio (see the module docstring); LabelStudioError otherwise."""
    if not settings.LABEL_STUDIO_URL:
        raise LabelStudioError(f"image {url[:100]!r} is at Label Studio, and LABEL_STUDIO_URL is not set")
    absolute = urljoin(settings.LABEL_STUDIO_URL + "/", url)
    allowed = urlsplit(settings.LABEL_STUDIO_URL)
    if (urlsplit(absolute).scheme, urlsplit(absolute).netloc) != (allowed.scheme, allowed.netloc):
        raise LabelStudioError(f"image {url[:100]!r} is not at LABEL_STUDIO_URL ({settings.LABEL_STUDIO_URL}); the "
                               "studio fetches task images from Label Studio only")
    headers = {"Authorization": f"Token {settings.LABEL_STUDIO_API_KEY}"} if settings.LABEL_STUDIO_API_KEY else {}
    chunks, size = [], 0
    with httpx.stream("GET", absolute, headers=headers, timeout=FETCH_TIMEOUT_S, follow_redirects=True) as response:
        if response.status_code != 200:
            raise LabelStudioError(f"image {url[:100]!r}: Label Studio answered HTTP {response.status_code}")
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > settings.max_upload_bytes:
                raise LabelStudioError(f"image {url[:100]!r} is over MAX_UPLOAD_MB ({settings.MAX_UPLOAD_MB} MB)")
            chunks.append(chunk)
    return b"".join(chunks)


def task_image(task: dict, data_key: str, settings: Settings) -> Image.Image:
    """The RGB image of `task` under data[data_key], checked like an upload; LabelStudioError naming the task."""
    url = (task.get("data") or {}).get(data_key)
    if not isinstance(url, str) or not url:
        raise LabelStudioError(f"task {task.get('id')}: data has no {data_key!r} image")
    try:
        if url.startswith("data:"):
            header, _, payload = url.partition(",")
            data = base64.b64decode(payload) if header.endswith(";base64") else payload.encode()
        else:
            data = _fetch(url, settings)
        decoded = decode_to_png(data)
    except ImageRefused as error:
        raise LabelStudioError(f"task {task.get('id')}: image refused: {error.reason}") from None
    except (ValueError, httpx.HTTPError) as error:
        raise LabelStudioError(f"task {task.get('id')}: {error}") from None
    return Image.open(io.BytesIO(decoded.png_bytes)).convert("RGB")


def region(control: Control, label: str, instance: Instance, size: tuple[int, int]) -> dict:
    """One Label Studio result region of `instance` labelled `label` (mask at the image's size, box xyxy in pixels)."""
    width, height = size
    if control.result_type == "brushlabels":
        value = {"format": "rle", "rle": encode_brush_rle(instance.mask), "brushlabels": [label]}
    else:
        x0, y0, x1, y1 = instance.box
        value = {"x": 100 * x0 / width, "y": 100 * y0 / height, "width": 100 * (x1 - x0) / width,
                 "height": 100 * (y1 - y0) / height, "rotation": 0, "rectanglelabels": [label]}
    return {"id": uuid.uuid4().hex[:10], "from_name": control.from_name, "to_name": control.to_name,
            "type": control.result_type, "original_width": width, "original_height": height, "image_rotation": 0,
            "value": value, "score": round(float(instance.score), 4)}


def task_prediction(controls: list[Control], task: dict, settings: Settings, find, model_version: str) -> dict:
    """The prediction of one task: `find(image, phrases)` -> instances per phrase, for each control's labels."""
    results = []
    try:
        images = {key: task_image(task, key, settings) for key in {control.data_key for control in controls}}
    except LabelStudioError as error:
        logger.warning("Label Studio predict: %s", error)
        return {"result": [], "score": 0.0, "model_version": model_version}
    for control in controls:
        image = images[control.data_key]
        for label, instances in zip(control.labels, find(image, list(control.labels))):
            results += [region(control, label, instance, image.size) for instance in instances]
    scores = [item["score"] for item in results]
    return {"result": results, "score": sum(scores) / len(scores) if scores else 0.0, "model_version": model_version}
