"""Reading the process tree from /proc (Linux): whom a process started, and whether it still runs."""
from __future__ import annotations

from pathlib import Path


def child_pids(pid: int) -> list[int]:
    """Children of every thread of `pid` (a child belongs to the thread that forked it)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:  # the thread or the process ended meanwhile
            pass
    return children


def descendant_pids(pid: int) -> list[int]:
    """Children, grandchildren, ... of `pid`."""
    found = child_pids(pid)
    for child in list(found):
        found += descendant_pids(child)
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has ended; only its exit status is left)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def exists(pid: int) -> bool:
    """The process table still holds `pid`, zombie or not: a parent that reaps its children leaves none."""
    return Path(f"/proc/{pid}").exists()
