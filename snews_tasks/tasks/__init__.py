"""Delivery to MongoDB, Kafka and Slack: resource factories and one-attempt functions, no Celery."""
