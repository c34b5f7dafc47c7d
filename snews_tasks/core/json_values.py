"""Decoded data copied into plain JSON types, with nesting and size metered on the way.

A pickle can reference one object many times, so its expanded form can be vastly
larger than its bytes; metering while walking bounds the work whatever was sent.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from typing import NoReturn

from .errors import MessageError, show

MAX_NESTING = 32
_MIN_INT64, _MAX_INT64 = -(2**63), 2**63 - 1


def plain_json(value: object, max_bytes: int | None = None) -> object:
    """`value` as plain JSON types (dict, list, str, int, float, bool, None), or a MessageError
    naming where it is not; over `max_bytes` of JSON it is refused too."""
    return _JsonCopier(max_bytes).copy(value)


class _JsonCopier:
    """One walk over a value; it keeps the running JSON size."""

    def __init__(self, max_bytes: int | None) -> None:
        self._max_bytes = max_bytes
        self._size = 0

    def copy(self, value: object, path: tuple[str, ...] = ()) -> object:
        if isinstance(value, Enum):  # model_dump() leaves the schema's enums in place
            value = value.value
        if value is None or isinstance(value, bool):
            self._add(5 if value is False else 4)
            return value
        if isinstance(value, str):
            self._add(self._text_size(value, path))
            return str(value)
        if isinstance(value, int):
            if not _MIN_INT64 <= value <= _MAX_INT64:
                self._fail(path, "is an integer outside the 64-bit range")
            self._add(len(str(value)))
            return int(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                self._fail(path, f"must be a finite number, got {value}")
            self._add(len(repr(value)))
            return float(value)
        if isinstance(value, dict | list | tuple):
            if len(path) >= MAX_NESTING:
                self._fail(path, f"is nested deeper than {MAX_NESTING} levels")
            self._add(2 + max(len(value) - 1, 0))  # brackets and commas
            if isinstance(value, dict):
                return {
                    self._key(key, path): self.copy(item, (*path, key))
                    for key, item in value.items()
                }
            return [self.copy(item, (*path, f"[{index}]")) for index, item in enumerate(value)]
        self._fail(path, f"has a value of unsupported type {type(value).__name__}")

    def _key(self, key: object, path: tuple[str, ...]) -> str:
        if not isinstance(key, str):
            self._fail(path, f"has a non-string key {show(key)}")
        if "\x00" in key:  # BSON keys are NUL-terminated: the archive could not store it
            self._fail(path, f"has a key with a NUL character {show(key)}")
        self._add(self._text_size(key, path) + 1)
        return str(key)

    def _text_size(self, text: str, path: tuple[str, ...]) -> int:
        if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
            return len(text) + 2  # JSON writes it as it is, between quotes
        try:
            return len(json.dumps(text, ensure_ascii=False).encode("utf-8"))
        except UnicodeEncodeError:  # a pickle can carry lone surrogates; UTF-8 (and MongoDB) cannot
            self._fail(path, "has text that is not valid Unicode")

    def _add(self, size: int) -> None:
        self._size += size
        if self._max_bytes is not None and self._size > self._max_bytes:
            raise MessageError("payload", f"is over the limit of {self._max_bytes} bytes as JSON")

    @staticmethod
    def _fail(path: tuple[str, ...], problem: str) -> NoReturn:
        if not path:
            raise MessageError("payload", problem)
        head = path[0] or '""'  # an empty key is still named
        where = "".join(part if part.startswith("[") else f".{part}" for part in path[1:])
        raise MessageError(head, f"{problem} (at {head}{where})" if where else problem)
