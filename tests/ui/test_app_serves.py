"""`sam3-studio` as a real process: it serves the page, locks every route behind the
login when STUDIO_USERS is set, and refuses a bad setting with exit status 2."""
from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.ui.studio_process import REPO_ROOT, start_studio, stop, studio_env


@pytest.fixture
def open_studio_url(tmp_path):
    process, url = start_studio(tmp_path)
    yield url
    stop(process)


@pytest.fixture
def locked_studio_url(tmp_path):
    process, url = start_studio(tmp_path, STUDIO_USERS="alice:s3cret")
    yield url
    stop(process)


def test_serves_the_studio_page_and_config(open_studio_url, tmp_path):
    page = httpx.get(open_studio_url + "/", timeout=10)
    assert page.status_code == 200
    # the page carries its config as JSON: the app's title and its tab labels
    assert '"title":"SAM3 LoRA Studio"' in page.text and "Projects \\u0026 Data" in page.text
    config = httpx.get(open_studio_url + "/config", timeout=10)
    assert config.status_code == 200
    labels = {component.get("props", {}).get("label") for component in config.json()["components"]}
    assert {"Projects & Data", "Annotate", "Train", "Models", "Project"} <= labels
    assert (tmp_path / "data" / "studio.db").is_file()  # migrated at start
    # DATA_DIR is blocked from file serving even by its absolute path
    database = (tmp_path / "data" / "studio.db").resolve()
    assert httpx.get(f"{open_studio_url}/gradio_api/file={database}", timeout=10).status_code == 403


def test_without_a_session_every_route_answers_401_and_the_page_is_only_the_login(locked_studio_url):
    page = httpx.get(locked_studio_url + "/", timeout=10)
    assert page.status_code == 200  # gradio serves its login form at /
    assert '"auth_required":true' in page.text.replace(" ", "")
    assert "SAM3 LoRA Studio" not in page.text and "Projects" not in page.text
    for path in ("/config", "/gradio_api/info", "/gradio_api/file=/etc/passwd", "/gradio_api/login_check"):
        response = httpx.get(locked_studio_url + path, timeout=10)
        assert response.status_code == 401, path
        assert response.json()["detail"]["error"] == "Not authenticated"
    upload = httpx.post(locked_studio_url + "/gradio_api/upload", files={"files": ("a.png", b"x")}, timeout=10)
    assert upload.status_code == 401

    assert httpx.post(locked_studio_url + "/login", data={"username": "alice", "password": "nope"}).status_code == 400
    with httpx.Client(base_url=locked_studio_url, timeout=10) as client:
        assert client.post("/login", data={"username": "alice", "password": "s3cret"}).status_code == 200
        config = client.get("/config")
        assert config.status_code == 200 and "Projects & Data" in config.text


def test_a_bad_port_setting_exits_2_naming_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "app.main"], cwd=REPO_ROOT, env=studio_env(tmp_path, PORT="abc"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "PORT" in result.stderr and "integer" in result.stderr
    assert not (tmp_path / "data").exists()  # refused before touching anything
