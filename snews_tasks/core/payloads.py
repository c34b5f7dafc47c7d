"""What arrives from the network, turned into a plain dict; and what is kept of a reject.

Pickles go to the restricted decoder (`pickles`), never to `pickle.loads`. JSON
text whose value is a string holding the JSON text of an object is decoded once
more: snews-pt 3.0.0 writes ``JSONBlob(model.model_dump_json())`` (its connection
test), which hop encodes as JSON a second time. A rejected payload is archived
with its raw form, encoded once here for every caller (the ingest's bytes, the
writer's JSON values): text when it is UTF-8, else base64, and labelled with which.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any, NoReturn

from .errors import MessageError
from .json_values import MAX_NESTING, plain_json
from .pickles import decode_pickled_model
from .times import format_time_ns

#: A rejected payload is kept for diagnosis, not replay; this bound keeps any document far
#: below MongoDB's 16 MB limit even after base64 expansion.
MAX_RAW_BYTES = 1024 * 1024


def decode_payload(payload: object, *, max_bytes: int) -> dict[str, Any]:
    """Turn a message body (bytes or text as read from Kafka, or a JSON value a task carried)
    into a plain JSON-type dict."""
    if isinstance(payload, str):
        payload = _utf8(payload)
    if isinstance(payload, bytes | bytearray | memoryview):
        raw = bytes(payload)
        if len(raw) > max_bytes:
            raise MessageError("payload", f"is {len(raw)} bytes, over the limit of {max_bytes}")
        if raw.startswith(b"\x80"):
            payload = decode_pickled_model(raw)
        else:
            payload = _load_json_text(raw)
            if isinstance(payload, str):
                payload = _load_json_string(payload)
    if not isinstance(payload, dict):
        raise MessageError("payload", f"must be a JSON object, got {type(payload).__name__}")
    copied = plain_json(payload, max_bytes)
    assert isinstance(copied, dict)
    return copied


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise MessageError("payload", f"is not valid Unicode text ({error.reason})") from None


def _load_json_string(text: str) -> dict[str, Any]:
    """The object whose JSON text a JSON string holds, under the checks of the outer text (the
    size limit too: unescaping never makes the text longer). One level only: a string holding
    the JSON text of another string is refused like any other value that is not an object."""
    where = "(in the JSON text the payload's string holds)"
    try:
        value = _load_json_text(_utf8(text))
    except MessageError as error:
        raise MessageError(error.field, f"{error.problem} {where}") from None
    if not isinstance(value, dict):
        raise MessageError(
            "payload",
            f"must be a JSON object, got a string holding JSON text of type {type(value).__name__}",
        )
    return value


def _load_json_text(raw: bytes) -> object:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MessageError(
            "payload", f"is not valid UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start})"
        ) from None
    try:
        return json.loads(
            text, parse_constant=_reject_json_constant, object_pairs_hook=_unique_keys
        )
    except MessageError:
        raise
    except ValueError as error:  # also integers too long to convert, which are not JSONDecodeError
        raise MessageError("payload", f"is not valid JSON: {error}") from None
    except RecursionError:
        raise MessageError("payload", f"JSON is nested deeper than {MAX_NESTING} levels") from None


def _reject_json_constant(name: str) -> NoReturn:
    raise MessageError("payload", f"{name} is not a valid JSON number")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """Refuse duplicate keys: json would silently keep the last, hiding what was sent."""
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise MessageError("payload", f"JSON object has the key {key!r} twice")
        result[key] = value
    return result


@dataclass(frozen=True)
class RawPayload:
    """A payload as the reject archive keeps it."""

    text: str
    encoding: str  # "utf-8" or "base64"
    size_bytes: int
    truncated: bool
    digest: str  # sha256 of the whole payload: the same payload is the same reject

    def fields(self) -> dict[str, Any]:
        return {
            "raw": self.text,
            "raw_encoding": self.encoding,
            "raw_size_bytes": self.size_bytes,
            "raw_truncated": self.truncated,
        }


def raw_payload(payload: object) -> RawPayload:
    """Bytes as read (text if UTF-8, else base64), or a JSON value as JSON text. A string may
    hold lone surrogates (a JSON escape such as \\ud800 decodes to one), which UTF-8 cannot
    encode: they are kept as backslash escapes, so the reject can always be stored."""
    if isinstance(payload, bytes | bytearray | memoryview):
        data = bytes(payload)
    elif isinstance(payload, str):
        data = payload.encode("utf-8", "backslashreplace")
    else:
        data = json.dumps(payload, sort_keys=True, default=repr).encode("utf-8", "backslashreplace")
    kept = data[:MAX_RAW_BYTES]
    try:
        text, encoding = kept.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    return RawPayload(
        text, encoding, len(data), len(data) > MAX_RAW_BYTES, hashlib.sha256(data).hexdigest()
    )


def reject_document(
    payload: object, error: MessageError, received_ns: int, **context: Any
) -> dict[str, Any]:
    """A rejected message as archived: the raw payload, the field, the reason, and where it
    came from (`context`, e.g. the topic)."""
    raw = raw_payload(payload)
    return {
        "reject_id": raw.digest,
        **raw.fields(),
        "field": error.field,
        "reason": str(error),
        "received_time_utc": format_time_ns(received_ns),
        **context,
    }
