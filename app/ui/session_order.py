"""One browser session's Annotate events run one at a time; different sessions run side by side.

Gradio's concurrency groups are global: with one group of size 1 for the Annotate tab,
one user's Find all delayed every other user's clicks. Instead the events share a group
of SESSION_PARALLELISM workers and each handler holds its session's lock while it runs
(key: gradio's session_hash, one per open page), so within a page a key pressed while
Find all runs still acts on its result (gr.State is read when the event starts, after
the lock), and two pages do not wait for each other beyond the worker count.

Events of one session are queued by gradio in arrival order and start in that order;
the lock keeps them from overlapping.
"""
from __future__ import annotations

import inspect
import threading
import typing
import weakref
from collections.abc import Callable
from typing import Any

import gradio as gr

SESSION_PARALLELISM = 4  # Annotate events of different sessions running at once (2 CPU cores: model work is short)


class _SessionLock:
    __slots__ = ("lock", "__weakref__")

    def __init__(self) -> None:
        self.lock = threading.Lock()


_LOCKS: weakref.WeakValueDictionary[str, _SessionLock] = weakref.WeakValueDictionary()
_LOCKS_GUARD = threading.Lock()


def session_lock(session_hash: str) -> _SessionLock:
    """The lock of one browser session (kept while some event holds or waits on it)."""
    with _LOCKS_GUARD:
        found = _LOCKS.get(session_hash)
        if found is None:
            found = _LOCKS[session_hash] = _SessionLock()
        return found


def in_session_order(handler: Callable[..., Any]) -> Callable[..., Any]:
    """`handler` wrapped to hold its session's lock; gradio passes the gr.Request as its first argument
    (the wrapper's signature is (request: gr.Request, *handler's parameters), so gr.SelectData still arrives)."""
    def run(request: gr.Request, *args: Any) -> Any:
        held = session_lock(getattr(request, "session_hash", None) or "")  # a strong reference while it runs
        with held.lock:
            return handler(*args)

    parameters = list(inspect.signature(handler).parameters.values())
    request_parameter = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)
    run.__signature__ = inspect.Signature([request_parameter, *parameters])
    # gradio finds gr.Request / gr.SelectData parameters by their type hints
    run.__annotations__ = {**typing.get_type_hints(getattr(handler, "func", handler)), "request": gr.Request}
    run.__name__ = getattr(handler, "__name__", None) or getattr(getattr(handler, "func", None), "__name__", "handler")
    return run
