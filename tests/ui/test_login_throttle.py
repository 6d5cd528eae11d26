"""The login holds against guessing (app/login_throttle.py, app/http_guard.py): the policy on a
clock the test moves, then `sam3-studio` as a real process brute-forced over HTTP with small
back-off settings: 429 with Retry-After during the back-off even for the right password,
per user and per address, logged, and the right password works again once it ends. Every
response forbids framing, and the login cookies carry the same flags, Secure over HTTPS."""
from __future__ import annotations

import time

import httpx
import pytest

from app import login_throttle
from app.http_guard import cookie_with_flags, printable
from app.login_throttle import LoginThrottle, retry_after_header
from tests.ui.studio_process import start_studio, stop

BACKOFF_S = 4.0


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_back_off_starts_after_the_free_failures_and_doubles():
    clock = Clock()
    throttle = LoginThrottle(free_failures=3, backoff_s=10, max_backoff_s=25, clock=clock)
    keys = ["user alice", "address 10.0.0.1"]
    assert [throttle.failed(keys) for _ in range(3)] == [0, 0, 10]
    assert throttle.retry_after_s(["user alice"]) == 10 and throttle.retry_after_s(["address 10.0.0.2"]) == 0
    clock.now += 10
    assert throttle.retry_after_s(keys) == 0
    assert throttle.failed(keys) == 20  # the 4th failure in a row doubles it
    clock.now += 20
    assert throttle.failed(keys) == 25  # capped at max_backoff_s
    throttle.succeeded(["user alice"])
    assert throttle.retry_after_s(["user alice"]) == 0 and throttle.retry_after_s(["address 10.0.0.1"]) == 25


def test_a_quiet_key_starts_again_from_zero():
    clock = Clock()
    throttle = LoginThrottle(free_failures=2, backoff_s=10, max_backoff_s=60, clock=clock)
    assert throttle.failed(["user bob"]) == 0
    clock.now += 61
    assert throttle.failed(["user bob"]) == 0 and throttle.failures("user bob") == 1


def test_a_flood_of_keys_is_pruned_idle_first(monkeypatch):
    monkeypatch.setattr(login_throttle, "MAX_KEYS", 4)
    clock = Clock()
    throttle = LoginThrottle(free_failures=1, backoff_s=10, max_backoff_s=10, clock=clock)
    throttle.failed(["address old"])
    clock.now += 30  # idle: past its back-off by more than max_backoff_s
    for i in range(3):
        throttle.failed([f"address new-{i}"])
    throttle.failed(["address newest"])  # the table is full: the idle key goes first
    assert throttle.failures("address old") == 0 and throttle.retry_after_s(["address new-0"]) > 0
    for i in range(3, 9):
        throttle.failed([f"address new-{i}"])
    assert len(throttle._keys) <= 4 and throttle.retry_after_s(["address new-8"]) > 0  # then the oldest half


def test_cookie_flags_are_the_studio_s():
    gradio_cookie = "access-token-x=abc; HttpOnly; Path=/; SameSite=none; Secure"
    assert cookie_with_flags(gradio_cookie, https=False) == "access-token-x=abc; Path=/; HttpOnly; SameSite=Lax"
    assert cookie_with_flags("a=1; Path=/", https=True) == "a=1; Path=/; HttpOnly; SameSite=Lax; Secure"
    assert retry_after_header(0.2) == "1" and retry_after_header(2.01) == "3"
    assert printable("eve\nFAKE LOG LINE" + "x" * 100) == "eve?FAKE LOG LINE" + "x" * 47


@pytest.fixture(scope="module")
def guarded_studio(tmp_path_factory):
    """One studio for the module: each test uses users and addresses of its own."""
    tmp_path = tmp_path_factory.mktemp("guarded")
    process, url = start_studio(tmp_path, STUDIO_USERS="alice:s3cret,bob:other,carol:c4rol,dave:d4ve,erin:e4rin",
                                LOGIN_FREE_FAILURES="3", LOGIN_BACKOFF_S=str(BACKOFF_S), LOGIN_BACKOFF_MAX_S="8")
    yield url, tmp_path
    stop(process)


def login(client: httpx.Client, user: str, password: str, address: str = "") -> httpx.Response:
    # The studio trusts X-Forwarded-For from 127.0.0.1 (uvicorn's FORWARDED_ALLOW_IPS default), as from a local proxy.
    headers = {"X-Forwarded-For": address} if address else {}
    return client.post("/login", data={"username": user, "password": password}, headers=headers)


def test_brute_force_meets_the_back_off_and_the_right_password_works_after_it(guarded_studio):
    url, tmp_path = guarded_studio
    with httpx.Client(base_url=url, timeout=10) as client:
        answers = [login(client, "alice", f"guess-{i}", "10.0.0.1") for i in range(3)]
        assert [answer.status_code for answer in answers] == [400, 400, 400]
        assert answers[-1].headers["retry-after"] == "4"  # the failure that starts the back-off says so
        started = time.monotonic()
        burst = [login(client, "alice", f"guess-{i}", "10.0.0.1") for i in range(30)]
        assert {answer.status_code for answer in burst} == {429}
        assert 1 <= int(burst[-1].headers["retry-after"]) <= 4
        refused = login(client, "alice", "s3cret", "10.0.0.1")  # the right password too
        assert refused.status_code == 429 and "access-token" not in refused.headers.get("set-cookie", "")
        assert login(client, "bob", "other", "10.0.0.1").status_code == 429  # the address backs off too
        assert login(client, "bob", "other", "10.0.0.2").status_code == 200  # another user elsewhere is not
        assert client.get("/config").status_code == 200
        client.cookies.clear()

        time.sleep(max(0.0, BACKOFF_S - (time.monotonic() - started)) + 0.2)  # refusals did not extend it
        accepted = login(client, "alice", "s3cret", "10.0.0.1")
        assert accepted.status_code == 200
        assert client.get("/config").status_code == 200

    log = "".join(path.read_text() for path in tmp_path.glob("studio-*.log"))
    assert "failed login for 'alice' from 10.0.0.1 (3 in a row)" in log
    assert "too many failed logins for address 10.0.0.1 and user alice: refusing them for 4 s" in log
    assert "refused 1 login(s) during a back-off" in log


def test_one_user_is_guarded_across_addresses(guarded_studio):
    url, _ = guarded_studio
    with httpx.Client(base_url=url, timeout=10) as client:
        assert [login(client, "carol", "guess", f"10.0.1.{i}").status_code for i in range(3)] == [400, 400, 400]
        assert login(client, "carol", "c4rol", "10.0.1.9").status_code == 429
        assert login(client, "dave", "d4ve", "10.0.1.9").status_code == 200
        # A name no one has backs off the same way: the answers do not tell which names exist.
        assert [login(client, "mallory", "guess", f"10.0.2.{i}").status_code for i in range(4)] == [400, 400, 400, 429]


def test_basic_credentials_of_the_predict_api_meet_the_same_back_off(guarded_studio):
    url, _ = guarded_studio
    health = "/labelstudio/base/health"  # behind the login; Label Studio sends Basic credentials
    with httpx.Client(base_url=url, timeout=10) as client:
        guesses = [client.get(health, auth=("erin", f"guess-{i}"), headers={"X-Forwarded-For": "10.0.3.1"})
                   for i in range(4)]
        assert [answer.status_code for answer in guesses] == [401, 401, 401, 429]
        refused = client.get(health, auth=("erin", "e4rin"), headers={"X-Forwarded-For": "10.0.3.2"})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1  # the user backs off
        time.sleep(BACKOFF_S + 0.2)
        assert client.get(health, auth=("erin", "e4rin"), headers={"X-Forwarded-For": "10.0.3.2"}).status_code == 200


def test_frames_are_refused_and_the_cookies_agree(guarded_studio):
    url, _ = guarded_studio
    page = httpx.get(url + "/", timeout=10)
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert page.headers["x-content-type-options"] == "nosniff"
    with httpx.Client(base_url=url, timeout=10) as client:
        plain = login(client, "dave", "d4ve").headers.get_list("set-cookie")
        proxied = client.post("/login", data={"username": "dave", "password": "d4ve"},
                              headers={"X-Forwarded-Proto": "https"}).headers.get_list("set-cookie")
    assert len(plain) == 2 and all(cookie.endswith("; HttpOnly; SameSite=Lax") for cookie in plain)
    assert len(proxied) == 2 and all(cookie.endswith("; HttpOnly; SameSite=Lax; Secure") for cookie in proxied)
