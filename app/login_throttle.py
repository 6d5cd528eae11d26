"""Back-off after failed logins, per user name and per client address (README, "Access").

Each key ("user alice", "address 203.0.113.7") counts its failed logins in a row. From
the `free_failures`-th one on, the key is refused for

    backoff_s · 2^(failures − free_failures), at most max_backoff_s

seconds after its last failure; a refused attempt is not a password check, so it
neither counts nor extends the back-off. A successful login clears the keys it used; a
key with no failure for max_backoff_s past its back-off starts again from zero. Names
that exist and names that do not are counted alike (a difference would tell which
exist); at MAX_KEYS keys the idle ones are dropped, then the oldest half, so a flood of
made-up names or addresses cannot grow the table without bound.

The table lives in the studio's memory: a restart clears it, and several studio processes
behind one proxy would each keep their own.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

MAX_KEYS = 10_000


@dataclass
class _Failures:
    count: int = 0
    refused_until: float = 0.0  # clock() time; 0: not refused
    last_failure: float = 0.0


class LoginThrottle:
    def __init__(self, free_failures: int, backoff_s: float, max_backoff_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.free_failures, self.backoff_s, self.max_backoff_s = free_failures, backoff_s, max_backoff_s
        self.clock = clock
        self._keys: dict[str, _Failures] = {}
        self._lock = threading.Lock()

    def retry_after_s(self, keys: Iterable[str]) -> float:
        """Seconds until every key of `keys` may try again; 0 when none is refused."""
        now = self.clock()
        with self._lock:
            entries = [self._keys[key] for key in keys if key in self._keys]
        return max([entry.refused_until - now for entry in entries] + [0.0])

    def failed(self, keys: Iterable[str]) -> float:
        """Count a failed login for each key; returns the back-off (s) it starts, 0 for none."""
        now = self.clock()
        backoff = 0.0
        with self._lock:
            self._forget_old(now)
            for key in keys:
                entry = self._keys.setdefault(key, _Failures())
                if self._is_idle(entry, now):  # an old run of failures does not carry over
                    entry.count = 0
                entry.count += 1
                entry.last_failure = now
                if entry.count >= self.free_failures:
                    key_backoff = min(self.max_backoff_s, self.backoff_s * 2 ** (entry.count - self.free_failures))
                    entry.refused_until = now + key_backoff
                    backoff = max(backoff, key_backoff)
        return backoff

    def succeeded(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._keys.pop(key, None)

    def failures(self, key: str) -> int:
        with self._lock:
            entry = self._keys.get(key)
            return entry.count if entry else 0

    def _is_idle(self, entry: _Failures, now: float) -> bool:
        return now - max(entry.last_failure, entry.refused_until) > self.max_backoff_s

    def _forget_old(self, now: float) -> None:
        """At MAX_KEYS keys, drop the idle ones (module docstring), then if need be the oldest half."""
        if len(self._keys) < MAX_KEYS:
            return
        for key in [key for key, entry in self._keys.items() if self._is_idle(entry, now)]:
            del self._keys[key]
        if len(self._keys) >= MAX_KEYS:
            by_age = sorted(self._keys, key=lambda key: self._keys[key].last_failure)
            for key in by_age[:len(by_age) // 2]:
                del self._keys[key]


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds: round up, at least 1."""
    return str(max(1, math.ceil(seconds)))
