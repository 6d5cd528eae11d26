"""Docker healthcheck of a training worker (docker-compose.yml, service `worker`).

    python docker/worker_health.py train@$HOSTNAME

Healthy (exit 0) when the Celery node answers a ping, or when it is training: a worker
runs `--pool=solo`, so the task holds its only thread and the node answers no remote
control until the task returns (measured: `control.ping` gets no reply from a solo worker
in a task). So a node that is silent but has a running job it claimed (`Job.worker`)
whose heartbeat is younger than settings.JOB_STALE_AFTER_S counts as healthy too: that is
the same test by which the stale-job sweep decides a worker is alive. Otherwise exit 1 with
the reason on stderr. Needs REDIS_URL (remote control is off on the embedded broker).
"""
from __future__ import annotations

import sys
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.settings import Settings

PING_TIMEOUT_S = 5.0


def node_answers(settings: Settings, node: str, timeout_s: float = PING_TIMEOUT_S) -> bool:
    from app.jobs.queue import make_celery

    replies = make_celery(settings).control.ping(destination=[node], timeout=timeout_s)
    return any(node in reply for reply in replies)


def node_is_training(database_url: str, node: str, fresh_s: float) -> bool:
    """True when a running job claimed by `node` has a heartbeat newer than `fresh_s` seconds."""
    from sqlmodel import select

    from app.store.db import make_engine, read_session
    from app.store.models import Job, utcnow

    engine = make_engine(database_url)
    try:
        with read_session(engine) as session:
            fresh_since = utcnow() - timedelta(seconds=fresh_s)
            query = select(Job.id).where(Job.state == "running", Job.worker == node, Job.heartbeat_at >= fresh_since)
            return session.exec(query).first() is not None
    finally:
        engine.dispose()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docker/worker_health.py <node name, e.g. train@$HOSTNAME>", file=sys.stderr)
        return 2
    from app.settings import load_settings

    node, settings = argv[0], load_settings()
    if settings.embedded_broker:
        print("worker_health: REDIS_URL is empty; a worker on the embedded broker answers no ping", file=sys.stderr)
        return 2
    if node_answers(settings, node):
        return 0
    fresh_s = settings.JOB_STALE_AFTER_S
    if node_is_training(settings.database_url, node, fresh_s):
        return 0
    print(f"worker_health: {node} answers no ping and has no running job with a heartbeat in the last "
          f"{fresh_s:g} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
