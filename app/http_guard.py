"""The studio's HTTP rules on top of gradio's app: an ASGI middleware (`studio_http_guard`,
passed to gradio in app/main.py launch_options).

- POST /login, gradio's login form, goes through a LoginThrottle (app/login_throttle.py):
  while the user name or the client address is backing off, the answer is 429 with
  Retry-After and the password is not even checked; gradio's answer decides the rest
  (200: success, clears the count; 400: a failure, counted; the one that starts a
  back-off carries Retry-After too). Failures, back-offs and refusals are logged.
- Any request carrying `Authorization: Basic` (the HTTP predict API, app/predict_api.py)
  is a login attempt too, under the same throttle and keys: refused with 429 while its
  user or address backs off; the route's answer decides (401: a failure, else success).
- Every response: `X-Frame-Options: DENY` and `Content-Security-Policy: frame-ancestors
  'none'` (no other page may frame the studio: clickjacking), `X-Content-Type-Options: nosniff`.
- Every cookie set: `HttpOnly; SameSite=Lax`, and `Secure` exactly when the request came
  over HTTPS or settings.SECURE_COOKIES. gradio sets its session cookie twice, once
  `SameSite=None; Secure` (for iframes) and once without either; the rule gives both the
  same flags. "Came over HTTPS" is the ASGI scheme, which uvicorn takes from a proxy's
  X-Forwarded-Proto when the proxy's address is trusted (uvicorn's FORWARDED_ALLOW_IPS,
  default 127.0.0.1; the client address is taken from X-Forwarded-For the same way).
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from typing import Awaitable, Callable

from starlette.middleware import Middleware
from starlette.requests import Request

from app.login_throttle import LoginThrottle, retry_after_header
from app.settings import Settings

logger = logging.getLogger("sam3_studio.login")

LOGIN_PATHS = ("/login", "/login/")
MAX_LOGIN_BODY_BYTES = 64 * 1024  # a user name and a password
REFUSAL_LOG_EVERY_S = 10.0  # a brute force answered with 429s logs one line per this, with the count
SECURITY_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
)
COOKIE_FLAGS = ("httponly", "samesite", "secure")

Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def printable(name: str, limit: int = 64) -> str:
    """A client-chosen name fit for a key and a log line: at most `limit` characters, no control characters."""
    return "".join(char if char.isprintable() else "?" for char in name[:limit])


def cookie_with_flags(set_cookie: str, https: bool) -> str:
    """A Set-Cookie value with its HttpOnly / SameSite / Secure replaced by the studio's:
    'a=1; Path=/; SameSite=none; Secure' -> 'a=1; Path=/; HttpOnly; SameSite=Lax' over HTTP."""
    parts = [part.strip() for part in set_cookie.split(";")]
    kept = [parts[0]] + [part for part in parts[1:] if part and part.split("=")[0].strip().lower() not in COOKIE_FLAGS]
    return "; ".join(kept + ["HttpOnly", "SameSite=Lax"] + (["Secure"] if https else []))


def with_studio_headers(headers: list, https: bool) -> list:
    """The response headers with the security headers added (unless set) and every cookie's flags fixed."""
    names = {name.lower() for name, _ in headers}
    fixed = [(name, cookie_with_flags(value.decode("latin-1"), https).encode("latin-1"))
             if name.lower() == b"set-cookie" else (name, value) for name, value in headers]
    return fixed + [(name, value) for name, value in SECURITY_HEADERS if name not in names]


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands over `body` (already read) once, then passes on (http.disconnect)."""
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replayed


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it passes `limit` bytes."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            return body


def _basic_auth_user(scope: dict) -> str | None:
    """The user name of the request's `Authorization: Basic` header ("" when unreadable), None without one."""
    header = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")[0].strip()
    except (binascii.Error, UnicodeDecodeError):
        return ""


async def _json_response(send: Send, status: int, detail: str, headers: list | None = None) -> None:
    content = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": content})


class StudioHttpGuard:
    """ASGI middleware applying the module docstring's rules; `throttle` None: no login to guard."""

    def __init__(self, app, throttle: LoginThrottle | None, secure_cookies: bool):
        self.app, self.throttle, self.secure_cookies = app, throttle, secure_cookies
        self._refusals, self._refusals_logged_at = 0, 0.0

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = self.secure_cookies or scope.get("scheme") == "https"

        async def send_with_rules(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": with_studio_headers(list(message.get("headers", [])), https)}
            await send(message)

        basic_user = _basic_auth_user(scope)
        if self.throttle is not None and scope["method"] == "POST" and scope["path"] in LOGIN_PATHS:
            body = await _read_body(receive, MAX_LOGIN_BODY_BYTES)
            if body is None:
                await _json_response(send_with_rules, 413, "login form too large")
                return
            await self._attempt(scope, _replay(body, receive), send_with_rules, await self._username(scope, body),
                                failed_status=400)
        elif self.throttle is not None and basic_user is not None:
            await self._attempt(scope, receive, send_with_rules, basic_user, failed_status=401)
        else:
            await self.app(scope, receive, send_with_rules)

    async def _attempt(self, scope: dict, receive: Receive, send: Send, username: str, failed_status: int) -> None:
        """One login attempt by `username`: refused during a back-off; the app's answer counted
        (`failed_status`: a failure; a 2xx: a success)."""
        address = scope["client"][0] if scope.get("client") else "unknown"
        # Every name counts, existing or not: a back-off only for real users would tell which exist.
        keys = [f"address {address}"] + ([f"user {printable(username)}"] if username else [])
        wait_s = self.throttle.retry_after_s(keys)
        if wait_s > 0:
            self._log_refusal(username, address, wait_s)
            await _json_response(send, 429, f"Too many failed logins: try again in {retry_after_header(wait_s)} s.",
                                 [(b"retry-after", retry_after_header(wait_s).encode())])
            return

        async def count_outcome(message: dict) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                self.throttle.succeeded(keys)
                logger.info("login: %r from %s", username, address)
            elif message["type"] == "http.response.start" and message["status"] == failed_status:
                message = self._count_failure(message, keys, username, address)
            await send(message)

        await self.app(scope, receive, count_outcome)

    async def _username(self, scope: dict, body: bytes) -> str:
        """The form's username as gradio reads it (stripped); "" when the form cannot be read."""
        async def no_more() -> dict:
            return {"type": "http.disconnect"}
        try:
            async with Request(scope, _replay(body, no_more)).form(max_files=0, max_fields=16) as form:
                return str(form.get("username", "")).strip()
        except Exception:  # a malformed form: gradio refuses it (422); only the address counts
            return ""

    def _count_failure(self, message: dict, keys: list[str], username: str, address: str) -> dict:
        backoff_s = self.throttle.failed(keys)
        in_a_row = max(self.throttle.failures(key) for key in keys)
        logger.warning("failed login for %r from %s (%d in a row)", username[:64], address, in_a_row)
        if not backoff_s:
            return message
        refused = [key for key in keys if self.throttle.retry_after_s([key]) > 0]
        logger.warning("too many failed logins for %s: refusing them for %.0f s", " and ".join(refused), backoff_s)
        return {**message, "headers": [*message.get("headers", []),
                                       (b"retry-after", retry_after_header(backoff_s).encode())]}

    def _log_refusal(self, username: str, address: str, wait_s: float) -> None:
        self._refusals += 1
        now = time.monotonic()
        if now - self._refusals_logged_at >= REFUSAL_LOG_EVERY_S:
            logger.warning("refused %d login(s) during a back-off, the last for %r from %s (%.0f s left)",
                           self._refusals, username[:64], address, wait_s)
            self._refusals, self._refusals_logged_at = 0, now


def studio_http_guard(settings: Settings) -> Middleware:
    """The middleware for gradio's app (launch(app_kwargs={"middleware": [...]}))."""
    throttle = LoginThrottle(settings.LOGIN_FREE_FAILURES, settings.LOGIN_BACKOFF_S,
                             settings.LOGIN_BACKOFF_MAX_S) if settings.users else None
    return Middleware(StudioHttpGuard, throttle=throttle, secure_cookies=settings.SECURE_COOKIES)
