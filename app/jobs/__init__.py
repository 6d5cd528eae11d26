"""The fine-tune (and pre-label) job's one home (architecture.md, "Data flow of a fine-tune").

    recipe.py           presets (presets/*.yaml, the same files as configs/), worker-set keys,
                        the job row's config and the TrainConfig a job runs
    lifecycle.py        the job row: submit / claim / beat / cancel / finish / release, the adapter row
    prelabel.py         the pre-label job: its config, its frozen target images, submit (the same
                        row machinery and message; worker/run_prelabel.py runs it)
    queue.py            the Celery app factory and the sender (by task name, never by import)
    sweep.py            re-send lost messages, re-queue jobs whose worker stopped beating or died
    metrics.py          metric rows: the worker appends, the UI polls
    progress.py         steps per second of a running attempt (the ETA)
    embedded_worker.py  a worker child process (`celery -A worker.celery_app`, by name) and the
                        services `sam3-studio` runs beside the web app
    worker_supervisor.py  keeps the embedded worker running: restart with back-off, its state in words
    parent_death.py     a child process dies with its parent (parent-death signal, parent-pid watch)

The worker (worker/) imports this package; nothing here imports worker.
"""
