"""snews_tasks: the SNEWS 2.0 coincidence and alert backend on Celery.

`celery -A snews_tasks worker` finds the Celery app here. It is imported on
first use, so the pure parts (engine, replay) load without Celery.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from .celery_app import app

        return app
    raise AttributeError(f"module 'snews_tasks' has no attribute {name!r}")
