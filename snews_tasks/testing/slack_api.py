"""A small Slack Web API over real HTTP, so tests run the real slack_sdk client.

Point `slack_sdk.WebClient(token=..., base_url=server.base_url)` at it. It
implements `chat.postMessage`, `auth.test` and the three steps of slack_sdk's
`files_upload_v2` (`files.getUploadURLExternal`, the upload itself to the URL it
hands out, `files.completeUploadExternal`), records the posts and the files it
accepts, and can be told how to fail: `script([...])` queues answers for the next
requests (any method), `down()` answers 503 to everything until `up()`, and
`hold()` keeps requests waiting, unanswered, until `release()` (a delivery in flight).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

# One scripted answer: (status, headers) for an HTTP error, or ("ok_false", error) for an
# HTTP 200 whose body says {"ok": false, "error": error}.
ScriptedAnswer = tuple[int, dict[str, str]] | tuple[str, str]


@dataclass(frozen=True)
class Call:
    """One request as the server saw it, accepted or not."""

    method: str
    payload: dict[str, Any]
    status: int
    ok: bool


def channel_id(name: str) -> str:
    """The id Slack answers for a channel given by name (uploads need the id)."""
    return "C" + hashlib.sha1(name.encode()).hexdigest()[:8].upper()


@dataclass
class SharedFile:
    """A file uploaded with files_upload_v2: its bytes, and where it was shared."""

    id: str
    filename: str
    data: bytes | None = None
    title: str | None = None
    channel_id: str | None = None
    thread_ts: str | None = None
    initial_comment: str | None = None


class FakeSlackApi:
    """The Slack Web API on 127.0.0.1, for as long as it runs (use as a context manager)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.uploads: dict[str, SharedFile] = {}  # by file id, from getUploadURLExternal on
        self.calls: list[Call] = []
        self._script: deque[ScriptedAnswer] = deque()
        self._down = False
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._released.set()
        self.held = 0  # requests that arrived while held
        self._next_ts = 1_700_000_000_000_100
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/api/"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True, name="fake-slack-api"
        )
        self._thread.start()

    def script(self, answers: list[ScriptedAnswer]) -> None:
        """Answer the next requests with these failures, in order, then normally again."""
        with self._lock:
            self._script.extend(answers)

    def down(self) -> None:
        with self._lock:
            self._down = True

    def up(self) -> None:
        with self._lock:
            self._down = False

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def files(self) -> list[SharedFile]:
        """The files uploaded and shared in a channel, in the order they were shared."""
        with self._lock:
            return [f for f in self.uploads.values() if f.channel_id is not None]

    def receive_upload(self, file_id: str, data: bytes) -> int:
        """Step two of files_upload_v2: the bytes, posted to the URL step one handed out."""
        with self._lock:
            shared = self.uploads.get(file_id)
            if shared is None or shared.data is not None:
                return 404
            shared.data = data
            return 200

    def answer(
        self, method: str, payload: dict[str, Any], authorized: bool
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """Decide status, headers and JSON body for one request, and record it."""
        if not self._released.is_set():
            with self._lock:
                self.held += 1
            self._released.wait()
        with self._lock:
            status, headers, body = self._decide(method, payload, authorized)
            self.calls.append(Call(method, payload, status, body["ok"]))
            if body["ok"] and method == "chat.postMessage":
                self.posts.append(payload)
        return status, headers, body

    def _decide(
        self, method: str, payload: dict[str, Any], authorized: bool
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        if self._down:
            return 503, {}, {"ok": False, "error": "service_unavailable"}
        if self._script:
            first, second = self._script.popleft()
            if first == "ok_false":
                return 200, {}, {"ok": False, "error": second}
            error = "ratelimited" if first == 429 else "internal_error"
            assert isinstance(second, dict)
            return int(first), dict(second), {"ok": False, "error": error}
        if not authorized:
            return 200, {}, {"ok": False, "error": "not_authed"}
        if method == "auth.test":
            return (
                200,
                {},
                {
                    "ok": True,
                    "url": "https://snews.slack.com/",
                    "team": "snews",
                    "user": "snews-bot",
                    "team_id": "T0",
                    "user_id": "U0",
                    "bot_id": "B0",
                },
            )
        if method == "files.getUploadURLExternal":
            return self._upload_url(payload)
        if method == "files.completeUploadExternal":
            return self._complete_upload(payload)
        if method != "chat.postMessage":
            return 404, {}, {"ok": False, "error": "unknown_method"}
        if not payload.get("channel"):
            return 200, {}, {"ok": False, "error": "channel_not_found"}
        if not any(payload.get(key) for key in ("text", "blocks", "attachments")):
            return 200, {}, {"ok": False, "error": "no_text"}
        self._next_ts += 1
        ts = f"{self._next_ts // 1_000_000}.{self._next_ts % 1_000_000:06d}"
        return (
            200,
            {},
            {
                "ok": True,
                "channel": channel_id(payload["channel"]),
                "ts": ts,
                "message": {"text": payload.get("text", ""), "ts": ts},
            },
        )

    def _upload_url(self, payload: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        if not payload.get("filename") or not str(payload.get("length", "")).isdigit():
            return 200, {}, {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{len(self.uploads) + 1:08d}"
        self.uploads[file_id] = SharedFile(file_id, str(payload["filename"]))
        url = f"http://127.0.0.1:{self.port}/upload/{file_id}"
        return 200, {}, {"ok": True, "upload_url": url, "file_id": file_id}

    def _complete_upload(
        self, payload: dict[str, Any]
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        try:
            listed = json.loads(payload.get("files") or "[]")
        except ValueError:
            return 200, {}, {"ok": False, "error": "invalid_arguments"}
        known_channels = {channel_id(p["channel"]) for p in self.posts}
        channel = payload.get("channel_id")
        if channel is not None and channel not in known_channels:
            return 200, {}, {"ok": False, "error": "channel_not_found"}
        completed = []
        for item in listed:
            shared = self.uploads.get(item.get("id"))
            if shared is None or shared.data is None:
                return 200, {}, {"ok": False, "error": "file_not_found"}
            shared.title = item.get("title")
            shared.channel_id = channel
            shared.thread_ts = payload.get("thread_ts")
            shared.initial_comment = payload.get("initial_comment")
            completed.append({"id": shared.id, "title": shared.title, "name": shared.filename})
        return 200, {}, {"ok": True, "files": completed}


def _handler_for(api: FakeSlackApi) -> type[BaseHTTPRequestHandler]:
    class SlackHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            url = urlsplit(self.path)
            if url.path.startswith("/upload/"):
                status = api.receive_upload(url.path.removeprefix("/upload/"), raw)
                self._reply(status, {}, b"OK" if status == 200 else b"Not Found", "text/plain")
                return
            payload: dict[str, Any] = dict(parse_qsl(url.query))
            if self.headers.get_content_type() == "application/json":
                payload.update(json.loads(raw or b"{}"))
            else:
                payload.update(parse_qsl(raw.decode()))
            authorization = self.headers.get("Authorization", "")
            authorized = authorization.startswith("Bearer ") and len(authorization) > 7
            method = url.path.removeprefix("/api/")
            status, headers, body = api.answer(method, payload, authorized)
            self._reply(status, headers, json.dumps(body).encode(), "application/json")

        def _reply(self, status: int, headers: dict[str, str], body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep request lines out of the test output."""

    return SlackHandler
