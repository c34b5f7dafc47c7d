"""Thin clients of the outside services, each with the errors its retry policy names: the
state Redis (state, outbox, receipts, detector status), the MongoDB archive, Kafka in and out,
Slack. No Celery here."""
