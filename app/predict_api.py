"""HTTP prediction for other labelling tools, on the studio's own FastAPI app and behind its login.

  POST /api/predict    multipart form: image (file), phrase (one or more), adapter_id (optional;
                       default the base SAM3), threshold (default 0.5)
                       -> COCO: {"images": [1 image], "categories": [one per phrase],
                                 "annotations": [{segmentation: compressed RLE, bbox: xywh, score, ...}],
                                 "model": {"adapter_id", "version"}}
  /labelstudio/{model}/health (GET), /setup, /predict (POST)
                       a Label Studio ML backend (app.label_studio_backend); {model} is "base" or
                       an adapter id, so a Label Studio project connects to
                       http://studio:7860/labelstudio/12 to pre-label with adapter 12, or to
                       http://studio:7860/labelstudio/12/min-score/0.3 to keep scores >= 0.3
                       (default 0.5)

Login: with STUDIO_USERS set, a request needs the studio's browser session (gradio's login
cookie) or HTTP Basic credentials of the same users (what Label Studio's "Basic Auth" option
and `curl -u` send); otherwise 401. Predictions run on the studio's loaded models
(Studio.models: the same SAM3 and adapters as the Annotate tab, with its backbone cache).

Mounting: `with_predict_routes(launch options, studio)` puts the routes into the FastAPI app that
gradio builds (Blocks.launch app_kwargs["routes"]), ahead of gradio's own routes.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import io
from typing import Annotated

from fastapi import APIRouter, Body, Depends, File, Form, HTTPException, Request, UploadFile
from PIL import Image

from app.label_studio_backend import LabelStudioError, parse_controls, task_prediction
from app.store.adapters import AdapterNotFound, adapter_folder, get_adapter
from app.store.image_decode import ImageRefused, decode_to_png
from app.store.models import Adapter
from app.studio import Studio
from sam3_lora.overlay import instances_to_coco
from sam3_lora.predict import predict_many

BASE_MODEL = "base"
DEFAULT_THRESHOLD = 0.5
MIN_SCORE = "min-score"  # /labelstudio/12/min-score/0.3: Label Studio joins paths to its URL and drops a query
LOGIN_REQUIRED = 'Basic realm="sam3-studio", charset="UTF-8"'


def _basic_user(header: str, users: dict[str, str]) -> str | None:
    """The user whose `Authorization: Basic ...` credentials these are, or None (compared in constant time)."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    expected = users.get(name)
    return name if expected is not None and hmac.compare_digest(expected.encode(), password.encode()) else None


def login_dependency(studio: Studio):
    """A FastAPI dependency refusing (401) a request without the studio's session or Basic credentials."""

    def require_login(request: Request) -> None:
        users = studio.settings.users
        if not users:
            return
        cookie_id = getattr(request.app, "cookie_id", None)  # gradio's App keeps its sessions by this cookie
        if cookie_id is not None:
            token = (request.cookies.get(f"access-token-{cookie_id}")
                     or request.cookies.get(f"access-token-unsecure-{cookie_id}"))
            if token and getattr(request.app, "tokens", {}).get(token):
                return
        if _basic_user(request.headers.get("authorization", ""), users) is None:
            raise HTTPException(401, "log in: send the studio's session cookie or HTTP Basic credentials "
                                     "of a STUDIO_USERS user", headers={"WWW-Authenticate": LOGIN_REQUIRED})

    return require_login


def _adapter(studio: Studio, model: str) -> Adapter | None:
    """None for "base", else the adapter row of id `model`; 404 naming what is missing."""
    if model in ("", BASE_MODEL):
        return None
    try:
        return get_adapter(studio.engine, int(model))
    except ValueError:
        raise HTTPException(404, f"model {model!r}: use 'base' or an adapter id") from None
    except AdapterNotFound as error:
        raise HTTPException(404, str(error)) from None


def _version(studio: Studio, adapter: Adapter | None) -> str:
    """The model_version Label Studio shows beside each prediction."""
    return f"sam3:{studio.settings.SAM3_MODEL}" if adapter is None else f"sam3-lora:adapter-{adapter.id}"


def _predictor(studio: Studio, adapter: Adapter | None) -> tuple:
    """(model, tokenizer, version) of the base SAM3 or base + `adapter`, loaded once by Studio.models."""
    folder = None if adapter is None else adapter_folder(studio.media_dir, adapter)
    return (*studio.models.get(folder), _version(studio, adapter))


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise HTTPException(422, f"threshold must be in [0, 1], got {threshold}")


def predict_routes(studio: Studio) -> list:
    """The routes above, each behind `login_dependency(studio)`."""
    router = APIRouter(dependencies=[Depends(login_dependency(studio))])

    @router.post("/api/predict")
    def predict_image(image: Annotated[UploadFile, File()], phrase: Annotated[list[str], Form()],
                      adapter_id: Annotated[str, Form()] = BASE_MODEL,
                      threshold: Annotated[float, Form()] = DEFAULT_THRESHOLD) -> dict:
        _check_threshold(threshold)
        data = image.file.read(studio.settings.max_upload_bytes + 1)
        if len(data) > studio.settings.max_upload_bytes:
            raise HTTPException(413, f"image: over MAX_UPLOAD_MB ({studio.settings.MAX_UPLOAD_MB} MB)")
        try:
            pixels = Image.open(io.BytesIO(decode_to_png(data).png_bytes)).convert("RGB")
        except ImageRefused as error:
            raise HTTPException(422, f"image {image.filename!r}: {error.reason}") from None
        adapter = _adapter(studio, adapter_id)
        model, tokenizer, version = _predictor(studio, adapter)
        try:
            found = predict_many(model, tokenizer, pixels, phrase, score_threshold=threshold, cache=studio.models.cache)
        except ValueError as error:  # an empty or too long phrase
            raise HTTPException(422, f"phrase: {error}") from None
        coco = instances_to_coco([item for instances in found for item in instances], pixels.size,
                                 image.filename or "image")
        return {**coco, "model": {"adapter_id": adapter.id if adapter else None, "version": version}}

    @router.get("/labelstudio/{model}/health")
    @router.get("/labelstudio/{model}/")
    @router.get(f"/labelstudio/{{model}}/{MIN_SCORE}/{{threshold}}/health")
    @router.get(f"/labelstudio/{{model}}/{MIN_SCORE}/{{threshold}}/")
    def label_studio_health(model: str, threshold: float = DEFAULT_THRESHOLD) -> dict:
        _check_threshold(threshold)
        _adapter(studio, model)  # answers without loading a model
        return {"status": "UP", "model_class": "SAM3 LoRA Studio", "model": model}

    @router.post("/labelstudio/{model}/setup")
    @router.post(f"/labelstudio/{{model}}/{MIN_SCORE}/{{threshold}}/setup")
    def label_studio_setup(model: str, request: Annotated[dict, Body()], threshold: float = DEFAULT_THRESHOLD) -> dict:
        _check_threshold(threshold)
        try:
            parse_controls(request.get("schema") or "")
        except LabelStudioError as error:
            raise HTTPException(422, str(error)) from None
        return {"model_version": _version(studio, _adapter(studio, model))}

    @router.post("/labelstudio/{model}/predict")
    @router.post(f"/labelstudio/{{model}}/{MIN_SCORE}/{{threshold}}/predict")
    def label_studio_predict(model: str, request: Annotated[dict, Body()], threshold: float = DEFAULT_THRESHOLD) -> dict:
        _check_threshold(threshold)
        tasks = request.get("tasks")
        if not isinstance(tasks, list):
            raise HTTPException(422, "tasks: expected a list of Label Studio tasks")
        try:
            controls = parse_controls(request.get("label_config") or "")
        except LabelStudioError as error:
            raise HTTPException(422, str(error)) from None
        sam3, tokenizer, version = _predictor(studio, _adapter(studio, model))

        def find(image, phrases):
            return predict_many(sam3, tokenizer, image, phrases, score_threshold=threshold, cache=studio.models.cache)

        return {"results": [task_prediction(controls, task, studio.settings, find, version) for task in tasks],
                "model_version": version}

    return router.routes


def with_predict_routes(launch_options: dict, studio: Studio) -> dict:
    """Blocks.launch keyword arguments with these routes added to the FastAPI app gradio builds."""
    app_kwargs = {**launch_options.get("app_kwargs", {}), "routes": predict_routes(studio)}
    return {**launch_options, "app_kwargs": app_kwargs}
