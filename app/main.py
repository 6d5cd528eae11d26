"""`sam3-studio`: read the settings, migrate, build the UI and serve it.

    sam3-studio [--host 0.0.0.0] [--port 7860] [--no-worker]

Settings come from environment variables (app/settings.py, README "Configuration");
a bad one stops the program with exit status 2 and a message naming it.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from app.http_guard import studio_http_guard
from app.jobs.embedded_worker import start_background_services
from app.settings import Settings, SettingsError, load_settings
from app.studio import open_studio

log = logging.getLogger("sam3_studio")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam3-studio",
        description="Serve SAM3 LoRA Studio: label images with SAM3 proposals and fine-tune LoRA adapters.",
        epilog="Everything else (DATA_DIR, DATABASE_URL, REDIS_URL, SAM3_MODEL, STUDIO_USERS, MAX_UPLOAD_MB, "
        "JOB_STALE_AFTER_S, LOGIN_*, SECURE_COOKIES) is read from environment variables; see the README. "
        "SIGTERM stops the studio as Ctrl-C does: its worker puts a running job back in the queue.",
    )
    parser.add_argument("--host", help="address to bind to (default: $HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: $PORT, else 7860)")
    worker = parser.add_mutually_exclusive_group()
    worker.add_argument(
        "--with-worker", dest="with_worker", action="store_true", default=None,
        help="also start a training worker process (the default without REDIS_URL, i.e. with the embedded broker)",
    )
    worker.add_argument(
        "--no-worker", dest="with_worker", action="store_false",
        help="serve the UI only; training jobs wait for a worker started elsewhere "
        "(celery -A worker.celery_app worker -Q train --pool=solo --concurrency=1); the default with REDIS_URL",
    )
    return parser


def check_data_dir(settings: Settings) -> None:
    """DATA_DIR is never served (blocked_paths), so it must not hold the system temp folder,
    where gradio's cache and the studio's thumbnails and export zips live."""
    data_dir = settings.DATA_DIR.resolve()
    temp_dir = Path(tempfile.gettempdir()).resolve()
    if temp_dir.is_relative_to(data_dir):
        raise SettingsError(f"invalid environment: DATA_DIR: {data_dir} contains the temp folder {temp_dir}; choose a folder of its own")


def launch_options(settings: Settings, host: str, port: int) -> dict[str, Any]:
    """Keyword arguments of Blocks.launch for these settings.

    Downloads (export zips) and thumbnails are returned as files from a per-user
    temp folder, which gradio copies into its cache; nothing else needs serving, so
    allowed_paths is empty and DATA_DIR (database, media) is blocked outright.
    FastAPI's /openapi.json and /docs are switched off: gradio leaves them outside the login.
    """
    from app.ui.theme import STUDIO_CSS, studio_theme

    users = settings.users
    return {
        "server_name": host,
        "server_port": port,
        "share": False,
        "max_file_size": settings.max_upload_bytes,
        "auth": list(users.items()) if users else None,
        "allowed_paths": [],
        "blocked_paths": [str(settings.DATA_DIR.resolve())],
        "ssr_mode": False,
        "run_history": False,  # it would keep copies of users' data in the browser
        "footer_links": ["api", "settings"],
        "theme": studio_theme(),
        "css": STUDIO_CSS,
        "app_kwargs": {"openapi_url": None, "docs_url": None, "redoc_url": None,
                       "middleware": [studio_http_guard(settings)]},  # login throttle, frame and cookie rules
    }


def stop_on_sigterm() -> None:
    """SIGTERM (docker stop, systemd, a plain `kill`) stops the studio as Ctrl-C does: gradio's
    launch returns and `main` stops the background services, so the worker puts its job back
    in the queue instead of being orphaned."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupt)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic.runtime.plugins", "httpx"):  # one line per plugin / per request
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = load_settings()
        check_data_dir(settings)
    except SettingsError as error:
        print(f"sam3-studio: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.port is not None and not 1 <= args.port <= 65535:
        print(f"sam3-studio: --port {args.port} is not between 1 and 65535", file=sys.stderr)
        raise SystemExit(2)

    studio = open_studio(settings)
    with_worker = settings.embedded_broker if args.with_worker is None else args.with_worker
    stop_on_sigterm()
    services = start_background_services(settings, studio.engine, with_worker=with_worker)
    studio = replace(studio, worker_status=services.worker_status)
    studio.models.warm_up_in_background()  # the banner says which SAM3 runs once it has loaded

    from app.predict_api import with_predict_routes
    from app.ui.layout import build_app  # gradio is slow to import; --help and bad settings stay fast

    demo = build_app(studio)
    try:
        options = launch_options(settings, args.host or settings.HOST, args.port or settings.PORT)
        demo.launch(**with_predict_routes(options, studio))  # + the HTTP predict API, behind the same login
    finally:
        services.stop()


if __name__ == "__main__":
    main()
