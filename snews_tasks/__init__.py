"""snews_tasks: the SNEWS 2.0 coincidence and alert backend on Celery.

Layers, each importing only those below it:
  entrypoints/  the processes and the CLI: ingest, up (local stack), status, publish, ...
  tasks/        the Celery app and its tasks, one module per queue
  adapters/     Redis state and outbox, MongoDB archive, Kafka in and out, Slack
  core/         pure rules: messages, the coincidence engine, alerts, no I/O
  settings      typed configuration, loaded once by the process that starts

`celery -A snews_tasks worker` finds the Celery app here; it is imported on
first use, so the pure parts (engine, replay) load without Celery.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from .tasks.app import app

        return app
    raise AttributeError(f"module 'snews_tasks' has no attribute {name!r}")
