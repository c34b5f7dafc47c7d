"""`snews-tasks publish --file`: the JSONL file an operator publishes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..adapters.observation_publisher import PublishError


def read_jsonl(path: Path, *, live: bool) -> list[dict[str, Any]]:
    """One JSON object per line; `is_test` is forced on unless `live`."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise PublishError(f"cannot read {path}: {error}") from None
    messages = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except json.JSONDecodeError as error:
            raise PublishError(f"{path}:{number}: not valid JSON: {error}") from None
        if not isinstance(message, dict):
            raise PublishError(
                f"{path}:{number}: must be a JSON object, got {type(message).__name__}"
            )
        messages.append(message if live else {**message, "is_test": True})
    if not messages:
        raise PublishError(f"{path}: no messages")
    return messages
