"""The Celery layer: the app (`app`), the process context, the notification task base, and
one module per queue (coincidence, storage, kafka, slack) plus the canary."""
