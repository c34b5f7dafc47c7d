"""The pure core: message validation, the coincidence engine, alert content, the false-alarm
model, significance and localization maths. No network, no disk, no Celery: a test of a rule
needs no server."""
