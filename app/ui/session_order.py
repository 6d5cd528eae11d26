"""One browser session's Annotate events run one at a time; different sessions run side by side.

Gradio's concurrency groups are global: with one group of size 1 for the Annotate tab,
one user's Find all delayed every other user's clicks. Instead the events share a group
of SESSION_PARALLELISM workers and each handler holds its session's lock while it runs
(key: gradio's session_hash, one per open page), and two pages do not wait for each other
beyond the worker count.

Events of one session are queued by gradio in arrival order and start in that order;
the lock keeps them from overlapping. Gradio reads an event's gr.State when the event
starts, before the handler waits for the lock, so a second event started while the first
runs holds the session as it was before the first. The lock therefore keeps the session
the last handler returned, and the next handler of the page gets that one: a key pressed
while Find all runs acts on Find all's result (a restore queued behind Find all does not
put back the selection Find all replaced).

    handler(session, *rest) -> (session, *outputs)   the session is the first input and output

Each event leaves one INFO line in the studio log (page, handler, seconds waited for the page's
previous event and run, the open image before and after), so a slow or lost click can be traced.
"""
from __future__ import annotations

import inspect
import logging
import threading
import time
import typing
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import gradio as gr

logger = logging.getLogger(__name__)

SESSION_PARALLELISM = 4  # Annotate events of different sessions running at once (2 CPU cores: model work is short)
SESSIONS_KEPT = 1024  # pages whose lock and last session are kept (the least recently used are dropped)


class _SessionLock:
    __slots__ = ("lock", "latest")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latest: dict | None = None  # the session the page's last handler returned (module docstring)


_LOCKS: OrderedDict[str, _SessionLock] = OrderedDict()
_LOCKS_GUARD = threading.Lock()


def session_lock(session_hash: str) -> _SessionLock:
    """The lock of one browser session. Kept after its events end: gradio may read an event's state
    before this is asked for, so the last session must outlive the handler that returned it."""
    with _LOCKS_GUARD:
        found = _LOCKS.get(session_hash)
        if found is None:
            found = _LOCKS[session_hash] = _SessionLock()
        _LOCKS.move_to_end(session_hash)
        while len(_LOCKS) > SESSIONS_KEPT:
            oldest = next((key for key, kept in _LOCKS.items() if not kept.lock.locked()), None)
            if oldest is None:
                break
            del _LOCKS[oldest]
        return found


def _is_session(value: Any) -> bool:
    """A session dict, not a gr.update() (also a dict) or another output."""
    return isinstance(value, dict) and "__type__" not in value


def _place(session: Any) -> str:
    """Where a session is, for the event log: "project 1 image 6 instance 11 (least certain first)"."""
    if not _is_session(session):
        return "unchanged"
    return (f"project {session.get('project_id')} image {session.get('image_id')} instance {session.get('selected')}"
            f" ({session.get('status_filter')})")


def in_session_order(handler: Callable[..., Any]) -> Callable[..., Any]:
    """`handler` wrapped to hold its session's lock; gradio passes the gr.Request as its first argument
    (the wrapper's signature is (request: gr.Request, *handler's parameters), so gr.SelectData still arrives)."""
    def run(request: gr.Request, *args: Any) -> Any:
        page = getattr(request, "session_hash", None) or ""
        held = session_lock(page)
        asked = time.monotonic()
        with held.lock:
            started = time.monotonic()
            if held.latest is not None and args and isinstance(args[0], dict):
                args = (held.latest, *args[1:])  # newer than the gr.State gradio read before the lock
            result = handler(*args)
            returned = result[0] if isinstance(result, tuple) and result else None
            if _is_session(returned):
                held.latest = returned
            logger.info("annotate %s on page %s: waited %.2f s, ran %.2f s; %s -> %s", run.__name__, page[:8],
                        started - asked, time.monotonic() - started, _place(args[0] if args else None), _place(returned))
            return result

    parameters = list(inspect.signature(handler).parameters.values())
    request_parameter = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)
    run.__signature__ = inspect.Signature([request_parameter, *parameters])
    # gradio finds gr.Request / gr.SelectData parameters by their type hints
    run.__annotations__ = {**typing.get_type_hints(getattr(handler, "func", handler)), "request": gr.Request}
    run.__name__ = getattr(handler, "__name__", None) or getattr(getattr(handler, "func", None), "__name__", "handler")
    return run
