"""Docker healthcheck of the web app (docker-compose.yml, service `app`).

    python docker/app_health.py [URL]      URL default http://127.0.0.1:$PORT/ (PORT default 7860)

Exit 0 when URL answers with HTTP 2xx or 3xx within TIMEOUT_S; otherwise exit 1 and say
why on stderr. With STUDIO_USERS set, "/" serves the login page, which counts: the
check is "the server answers", not "a user is logged in". Standard library only, so it
costs no import of gradio or torch every interval.
"""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 5.0


def app_answers(url: str, timeout_s: float = TIMEOUT_S) -> tuple[bool, str]:
    """(True, "HTTP 200") when `url` answers 2xx/3xx; (False, reason) otherwise."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= response.status < 400, f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return False, f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return False, str(getattr(error, "reason", error))


def main(argv: list[str]) -> int:
    url = argv[0] if argv else f"http://127.0.0.1:{os.environ.get('PORT', '7860')}/"
    healthy, detail = app_answers(url)
    if not healthy:
        print(f"app_health: {url} did not answer: {detail}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
