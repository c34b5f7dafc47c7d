# One image for every process role; docker-compose.yml picks the role with
# `command: workers/<role>` (the Procfile's launch scripts).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SNEWS_CONFIG_DIR=/app/config

WORKDIR /app

# Installed as a regular package, then the source copy is removed, so that every
# process imports the one in site-packages whatever its working directory.
COPY pyproject.toml README.md ./
COPY snews_tasks ./snews_tasks
RUN pip install . && rm -rf build snews_tasks snews_tasks.egg-info

COPY config ./config
COPY workers ./workers
COPY Procfile ./

RUN useradd --system --home-dir /app --shell /usr/sbin/nologin snews
USER snews
