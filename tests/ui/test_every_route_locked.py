"""With STUDIO_USERS set, every route the running app has (read from the app itself, so
routes a new gradio adds are probed too) refuses a request without a session, except
the few the login page needs, which carry none of the studio's data. The app is launched
as app.main launches it, the HTTP predict API (app.predict_api) included."""
from __future__ import annotations

import re

import httpx
import pytest

from app.main import launch_options
from app.predict_api import with_predict_routes
from app.settings import Settings
from app.store.projects import create_project
from app.studio import open_studio
from app.ui.layout import build_app
from tests.ui.studio_process import free_port

SECRET_PROJECT = "Secret bridge survey"
# What the login form itself loads; each answer is checked to hold no studio data.
PUBLIC = {
    "/", "/login", "/login/", "/logout", "/favicon.ico", "/theme.css", "/robots.txt", "/manifest.json",
    "/pwa_icon", "/pwa_icon/{size}", "/svelte/{path:path}", "/static/{path:path}", "/assets/{path:path}",
    "/gradio_api/theme.css", "/gradio_api/user", "/gradio_api/user/", "/gradio_api/token", "/gradio_api/token/",
    "/gradio_api/app_id", "/gradio_api/app_id/", "/gradio_api/startup-events",
}
REFUSED = {401, 403, 404, 405, 422}
OWN_API = ("/api/predict", "/labelstudio/")  # app.predict_api  # 422: the request is refused before any handler runs
EVENT_BODY = {"data": [], "fn_index": 0, "session_hash": "probe", "event_data": None, "trigger_id": 1}


def app_routes(routes) -> list[tuple[str, str]]:
    """(method, path) of every endpoint, descending into included routers."""
    found = []
    for route in routes:
        if getattr(route, "methods", None):
            found += [(method, route.path) for method in sorted(route.methods - {"HEAD"})]
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found += app_routes(inner.routes)
    return found


@pytest.fixture
def locked_app(tmp_path):
    settings = Settings(DATA_DIR=tmp_path / "data", STUDIO_USERS="alice:s3cret")
    studio = open_studio(settings)
    create_project(studio.engine, SECRET_PROJECT)
    demo = build_app(studio)
    port = free_port()
    options = with_predict_routes(launch_options(settings, "127.0.0.1", port), studio)
    demo.launch(**options, prevent_thread_lock=True, quiet=True)
    yield demo, f"http://127.0.0.1:{port}"
    demo.close()
    studio.engine.dispose()


def probe(client: httpx.Client, method: str, path: str) -> tuple[int, bytes]:
    url = re.sub(r"\{[^}]+\}", "probe", path)
    body = {"json": EVENT_BODY} if method == "POST" else {}
    with client.stream(method, url, **body) as response:  # streams (heartbeat, SSE) are read only in part
        # app/http_guard.py: no answer of any route may be framed by another site. (Signed-in users
        # share one team workspace, README "Access": one user's session shows the routes open up.)
        assert response.headers.get("x-frame-options") == "DENY", (method, path)
        assert response.headers.get("content-security-policy") == "frame-ancestors 'none'", (method, path)
        content = b""
        for chunk in response.iter_bytes():
            content += chunk
            if len(content) > 65536:
                break
        return response.status_code, content


def test_no_route_serves_studio_data_without_a_session(locked_app):
    demo, url = locked_app
    routes = app_routes(demo.app.routes)
    assert ("GET", "/config") in routes and ("POST", "/gradio_api/queue/join") in routes
    assert {("POST", "/api/predict"), ("POST", "/labelstudio/{model}/predict"),
            ("GET", "/labelstudio/{model}/health")} <= set(routes)
    assert not any(path in ("/openapi.json", "/docs", "/redoc") for _, path in routes)
    served = []
    with httpx.Client(base_url=url, timeout=httpx.Timeout(5.0, read=3.0)) as client:
        for method, path in routes:
            try:
                status, content = probe(client, method, path)
            except httpx.ReadTimeout:  # an event stream that waits for events: it sent nothing
                status, content = 0, b""
            assert SECRET_PROJECT.encode() not in content and b"Projects & Data" not in content, (method, path)
            if path.startswith(OWN_API):  # our routes check the login first: 401, never a 404 or 422 of a handler
                assert status == 401, (method, path, status, content[:200])
            elif path not in PUBLIC:
                assert status in REFUSED or status == 0, (method, path, status, content[:200])
            elif status == 200:
                served.append(path)
    assert "/" in served  # the login page itself is served


def test_after_login_the_same_client_reaches_the_config(locked_app):
    _, url = locked_app
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/config").status_code == 401
        assert client.post("/login", data={"username": "alice", "password": "s3cret"}).status_code == 200
        config = client.get("/config")
        assert config.status_code == 200 and "Projects & Data" in config.text
