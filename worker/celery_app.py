"""The Celery app every training worker runs:

    celery -A worker.celery_app worker -Q train --pool=solo --concurrency=1 --prefetch-multiplier=1

(app/jobs/embedded_worker.py starts the same command; docker-compose.yml too). The app is
the studio's (app/jobs/queue.make_celery) with the task modules included: worker.tasks,
plus CELERY_EXTRA_TASK_MODULES (tests add their echo tasks this way).
"""
from __future__ import annotations

from app.jobs.queue import make_celery
from app.settings import load_settings

TASK_MODULE = "worker.tasks"

_settings = load_settings()
celery_app = make_celery(_settings, include=[TASK_MODULE, *_settings.celery_extra_task_modules])
