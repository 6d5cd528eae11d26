"""The HTTP predict API and the Label Studio ML backend of a running studio (`python -m app.main`
with the tiny SAM3 and STUDIO_USERS set), over HTTP: behind the login, the same instances as
sam3_lora.predict in this process (base and adapter), COCO RLE out, Label Studio's request and
response shapes, task images fetched from a stand-in Label Studio only."""
from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from app.jobs.lifecycle import claim_job, create_job, finish_job, record_adapter
from app.settings import Settings
from app.store.projects import create_project
from app.studio import open_studio
from sam3_lora.adapter_io import save_adapter
from sam3_lora.predict import load_predictor, predict_many
from sam3_lora.synthetic import write_synthetic_coco
from tests.label_studio_support import brush_mask, start_label_studio_stub
from tests.tuned_lora import tuned_lora
from tests.ui.studio_process import start_studio, stop

USER, PASSWORD = "alice", "s3cret"
LS_TOKEN = "ls-token"
CONFIG = """<View><Image name="photo" value="$image"/>
<BrushLabels name="mask" toName="photo"><Label value="circle"/><Label value="square"/></BrushLabels>
<RectangleLabels name="box" toName="photo"><Label value="circle"/></RectangleLabels></View>"""


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    """(studio url, adapter id, adapter folder, image path, Label Studio stub url) with one trained-looking adapter."""
    root = tmp_path_factory.mktemp("predict-api")
    studio = open_studio(Settings(DATA_DIR=root / "data"))
    project = create_project(studio.engine, "Shapes")
    job = create_job(studio.engine, project.id, {"lora": {"rank": 4}}, [[1, 1]])
    claim_job(studio.engine, job.id, "w1")
    folder = save_adapter(tuned_lora(tiny_model_dir, seed=3), studio.media_dir / f"adapters/job-{job.id}")
    adapter = record_adapter(studio.engine, project.id, job.id, f"job-{job.id}", f"adapters/job-{job.id}",
                             base_model=str(tiny_model_dir), metrics={})
    finish_job(studio.engine, job.id, "succeeded")
    studio.engine.dispose()
    annotations = write_synthetic_coco(root / "shapes", num_images=2, image_size=112, seed=5)
    image = annotations.parent / "images" / "000001.png"
    ls_url, ls_server, asked = start_label_studio_stub({"/data/upload/1/shapes.png": image.read_bytes()}, LS_TOKEN)
    process, url = start_studio(root, STUDIO_USERS=f"{USER}:{PASSWORD}", SAM3_MODEL=str(tiny_model_dir),
                                LABEL_STUDIO_URL=ls_url, LABEL_STUDIO_API_KEY=LS_TOKEN)
    try:
        yield url, adapter.id, folder, image, ls_url, asked
    finally:
        stop(process)
        ls_server.shutdown()


def post_image(url: str, image, phrases: list[str], auth=(USER, PASSWORD), **fields) -> httpx.Response:
    files = {"image": (image.name, image.read_bytes(), "image/png")}
    data = {"phrase": phrases, **{name: str(value) for name, value in fields.items()}}
    return httpx.post(f"{url}/api/predict", files=files, data=data, auth=auth, timeout=120)


def expected(tiny_model_dir, adapter, image, phrases: list[str], threshold: float):
    model, tokenizer = load_predictor(tiny_model_dir, adapter=adapter)
    return predict_many(model, tokenizer, Image.open(image).convert("RGB"), phrases, score_threshold=threshold)


def assert_same_instances(annotations: list[dict], instances) -> None:
    assert len(annotations) == len(instances) > 0
    for annotation, instance in zip(annotations, instances):
        assert annotation["score"] == pytest.approx(instance.score, abs=1e-4)
        decoded = mask_utils.decode(annotation["segmentation"]).astype(bool)
        assert decoded.shape == instance.mask.shape
        assert np.mean(decoded == instance.mask) > 0.999  # a pixel may flip where a logit is ~0 (thread order)


def test_every_new_route_refuses_a_request_without_login(served):
    url = served[0]
    for method, path in [("POST", "/api/predict"), ("GET", "/labelstudio/base/health"), ("GET", "/labelstudio/base/"),
                         ("POST", "/labelstudio/base/setup"), ("POST", "/labelstudio/1/min-score/0.2/predict")]:
        response = httpx.request(method, url + path, json={}, timeout=30)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(f"{url}/labelstudio/base/health", auth=(USER, "wrong"), timeout=30).status_code == 401


def test_predict_returns_coco_rle_instances_of_the_base_and_of_an_adapter(served, tiny_model_dir):
    url, adapter_id, folder, image, *_ = served
    base = post_image(url, image, ["circle", "square"], threshold=0.0)
    assert base.status_code == 200, base.text
    body = base.json()
    assert body["images"] == [{"id": 1, "file_name": "000001.png", "width": 112, "height": 112}]
    assert {c["name"] for c in body["categories"]} == {"circle", "square"}
    assert body["model"]["adapter_id"] is None
    want = expected(tiny_model_dir, None, image, ["circle", "square"], 0.0)
    assert_same_instances(body["annotations"], [instance for found in want for instance in found])

    tuned = post_image(url, image, ["circle"], threshold=0.0, adapter_id=adapter_id).json()
    assert tuned["model"] == {"adapter_id": adapter_id, "version": f"sam3-lora:adapter-{adapter_id}"}
    [want_tuned] = expected(tiny_model_dir, folder, image, ["circle"], 0.0)
    assert_same_instances(tuned["annotations"], want_tuned)
    assert [a["score"] for a in tuned["annotations"]] != [a["score"] for a in body["annotations"]
                                                          if a["category_id"] == 1]


def test_the_browser_session_of_the_login_works_too(served):
    url, _, _, image, *_ = served
    with httpx.Client(base_url=url, timeout=120) as client:
        assert client.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 200
        files = {"image": ("x.png", image.read_bytes(), "image/png")}
        assert client.post("/api/predict", files=files, data={"phrase": "circle"}).status_code == 200


def test_bad_requests_name_the_problem(served):
    url, _, _, image, *_ = served
    not_image = httpx.post(f"{url}/api/predict", files={"image": ("x.png", b"<html>", "image/png")},
                           data={"phrase": "circle"}, auth=(USER, PASSWORD), timeout=60)
    assert not_image.status_code == 422 and "x.png" in not_image.json()["detail"]
    assert post_image(url, image, ["circle"], threshold=2).status_code == 422
    missing = post_image(url, image, ["circle"], adapter_id=999)
    assert missing.status_code == 404 and "adapter 999" in missing.json()["detail"]
    too_long = post_image(url, image, ["word " * 40])
    assert too_long.status_code == 422 and "longer than 32 tokens" in too_long.json()["detail"]


def test_label_studio_health_setup_and_predict(served, tiny_model_dir):
    url, adapter_id, folder, image, ls_url, asked = served
    backend = f"{url}/labelstudio/{adapter_id}/min-score/0"
    auth = (USER, PASSWORD)
    assert httpx.get(f"{backend}/health", auth=auth, timeout=30).json()["status"] == "UP"
    assert httpx.get(f"{url}/labelstudio/999/health", auth=auth, timeout=30).status_code == 404
    setup = httpx.post(f"{backend}/setup", auth=auth, timeout=30, json={
        "project": "3.1700000000", "schema": CONFIG, "hostname": ls_url, "access_token": "x"})
    assert setup.json() == {"model_version": f"sam3-lora:adapter-{adapter_id}"}
    refused = httpx.post(f"{backend}/setup", auth=auth, timeout=30, json={"project": "3.1", "schema": "<View/>"})
    assert refused.status_code == 422 and "BrushLabels" in refused.json()["detail"]

    inline = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    tasks = [{"id": 1, "data": {"image": "/data/upload/1/shapes.png"}},
             {"id": 2, "data": {"image": "http://198.51.100.7/elsewhere.png"}},
             {"id": 3, "data": {"image": inline}}]
    response = httpx.post(f"{backend}/predict", auth=auth, timeout=120, json={
        "tasks": tasks, "model_version": "", "project": "3.1700000000", "label_config": CONFIG,
        "params": {"login": None, "password": None, "context": None}})
    assert response.status_code == 200, response.text
    fetched, elsewhere, inlined = response.json()["results"]
    assert asked == ["/data/upload/1/shapes.png"]  # only Label Studio was asked, with its token
    assert elsewhere == {"result": [], "score": 0.0, "model_version": f"sam3-lora:adapter-{adapter_id}"}
    circles, squares = expected(tiny_model_dir, folder, image, ["circle", "square"], 0.0)
    for prediction in (fetched, inlined):
        brushes = [r for r in prediction["result"] if r["type"] == "brushlabels"]
        boxes = [r for r in prediction["result"] if r["type"] == "rectanglelabels"]
        assert [r["value"]["brushlabels"] for r in brushes] == [["circle"]] * len(circles) + [["square"]] * len(squares)
        assert len(boxes) == len(circles) and all(r["value"]["rectanglelabels"] == ["circle"] for r in boxes)
        for region, instance in zip(brushes, circles + squares):
            assert (region["from_name"], region["to_name"], region["original_width"]) == ("mask", "photo", 112)
            assert region["score"] == pytest.approx(instance.score, abs=1e-3)
            assert np.mean(brush_mask(region["value"]["rle"], 112, 112) == instance.mask) > 0.999
        x0, y0, x1, y1 = circles[0].box
        assert boxes[0]["value"]["x"] == pytest.approx(100 * x0 / 112, abs=1e-3)
        assert boxes[0]["value"]["width"] == pytest.approx(100 * (x1 - x0) / 112, abs=1e-3)
