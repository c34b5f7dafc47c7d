"""The error every bad input becomes: it names the field and says what is wrong with it."""

from __future__ import annotations


class MessageError(ValueError):
    """A rejected payload or message; `field` says where, `problem` says what is wrong."""

    def __init__(self, field: str | None, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(problem if field is None else f"{field}: {problem}")


def show(value: object) -> str:
    """A value quoted in an error, short enough for a log line whatever was sent."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
