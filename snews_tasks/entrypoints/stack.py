"""`snews-tasks up`: the whole local system in one command.

First the services: Redis, a Kafka-protocol broker, a MongoDB-protocol
server and an SMTP server (aiosmtpd, keeping the mails in the Maildir `MAIL_DIR`), each
reused when one already answers at its configured address, else started on that port
with `localstack`. Then every process of the Procfile
(the same topology docker-compose.yml runs), each in its own process group with
its output prefixed by its name. Ctrl-C or SIGTERM stops what this command
started, in reverse order. A process that dies stops the whole stack with a
non-zero status: restarting is docker-compose's job, and a local stack that
silently lost its coincidence worker would mislead whoever is testing with it.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

import pymongo
import redis
from pymongo.errors import PyMongoError
from pymongo.uri_parser import parse_uri

from ..core.backoff import capped_delay
from ..settings import Settings, gcn_credentials
from . import localstack
from .localstack import Service
from .process_groups import stop_group

DEFAULT_PROCFILE = Path(__file__).resolve().parents[2] / "Procfile"
#: Where the local SMTP server keeps the mails it receives (kept after `up` stops).
MAIL_DIR = Path(tempfile.gettempdir()) / "snews-tasks-mail"
LOCAL_HOSTS = ("127.0.0.1", "localhost")
WATCH_INTERVAL_S = 0.2
#: A process that exits is started again after 0.5 s, then 1, 2, ... up to 30 s while it keeps
#: failing; one that ran this long before it exited starts the count afresh.
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
RESTART_RESET_S = 60.0
_NAME = re.compile(r"[A-Za-z0-9_-]+")


class StackError(RuntimeError):
    """The stack cannot start as configured; the message says what to change."""


@dataclass(frozen=True)
class ProcfileEntry:
    name: str
    command: str


def parse_procfile(text: str, source: str = "Procfile") -> list[ProcfileEntry]:
    """`name: command` lines, as foreman and honcho read them; errors name the line."""
    entries: list[ProcfileEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, colon, command = line.partition(":")
        name, command = name.strip(), command.strip()
        where = f"{source}:{number}"
        if not colon:
            raise StackError(f"{where}: expected 'name: command', got {line.strip()!r}")
        if not _NAME.fullmatch(name):
            raise StackError(f"{where}: process name {name!r} must be letters, digits, - or _")
        if not command:
            raise StackError(f"{where}: process {name!r} has no command")
        if any(entry.name == name for entry in entries):
            raise StackError(f"{where}: process {name!r} is defined twice")
        entries.append(ProcfileEntry(name, command))
    if not entries:
        raise StackError(f"{source}: no processes")
    return entries


def read_procfile(path: Path) -> list[ProcfileEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise StackError(
            f"cannot read {path}: {error.strerror} (run from a checkout, or pass --procfile)"
        ) from None
    return parse_procfile(text, str(path))


def select_entries(entries: list[ProcfileEntry], only: str | None) -> list[ProcfileEntry]:
    """The entries named in `only` (a comma list), in Procfile order; all when None."""
    if only is None:
        return entries
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    unknown = sorted(wanted - {entry.name for entry in entries})
    if unknown or not wanted:
        raise StackError(
            f"--only: unknown process {', '.join(unknown) or '(none given)'}; "
            f"the Procfile has {', '.join(e.name for e in entries)}"
        )
    return [entry for entry in entries if entry.name in wanted]


class PrefixedOutput:
    """Interleaves the processes' output line by line, each prefixed with its name."""

    def __init__(self, out: IO[str], width: int) -> None:
        self.out = out
        self.width = width
        self._lock = threading.Lock()

    def line(self, name: str, text: str) -> None:
        with self._lock:
            self.out.write(f"{name:<{self.width}} | {text.rstrip()}\n")
            self.out.flush()


@dataclass
class RunningProcess:
    entry: ProcfileEntry
    process: subprocess.Popen
    reader: threading.Thread = field(repr=False)
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0  # in a row, without a long enough run between them


def start_process(
    entry: ProcfileEntry, *, cwd: Path, env: dict[str, str], output: PrefixedOutput
) -> RunningProcess:
    """`sh -c command` in a new session (so its group can be stopped whole), output relayed."""
    process = subprocess.Popen(
        ["/bin/sh", "-c", entry.command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
        errors="replace",
        bufsize=1,
    )

    def relay() -> None:
        assert process.stdout is not None  # started with stdout=PIPE
        for text in process.stdout:
            output.line(entry.name, text)

    reader = threading.Thread(target=relay, name=f"output-{entry.name}", daemon=True)
    reader.start()
    return RunningProcess(entry, process, reader)


# --- services ------------------------------------------------------------------------------------


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def _host_port(url: str, default_port: int, what: str) -> tuple[str, int]:
    parsed = urlparse(url)
    if not parsed.hostname:
        raise StackError(f"{what}: cannot tell host and port from the configured URL")
    return parsed.hostname, parsed.port or default_port


class Stack:
    """What `up` started, so that exactly that is stopped, newest first."""

    def __init__(self, settings: Settings, say: Callable[[str], None]) -> None:
        self.settings = settings
        self.say = say
        self._start: Callable[[ProcfileEntry], RunningProcess] = self._not_started
        self.services: list[Service] = []
        self.processes: list[RunningProcess] = []
        self.stopping = threading.Event()

    # services

    def start_services(self) -> None:
        for start in (self._redis, self._kafka, self._mongo, self._smtp):
            if self.stopping.is_set():
                return
            start()

    def _local_port(self, host: str, port: int, what: str) -> int:
        if host not in LOCAL_HOSTS:
            raise StackError(
                f"{what}: nothing answers at {host}:{port} and `up` only starts "
                "servers on 127.0.0.1; start it or use --no-services"
            )
        return port

    def _redis(self) -> None:
        urls = (
            self.settings.broker_url,
            self.settings.result_backend,
            self.settings.state_redis_url,
        )
        servers = sorted(
            {_host_port(url, 6379, "redis") for url in urls if url.startswith("redis://")}
        )
        for host, port in servers:
            try:
                with redis.Redis(host=host, port=port, socket_timeout=1) as client:
                    client.ping()
                self.say(f"redis: using the server at {host}:{port}")
                continue
            except redis.RedisError:
                pass
            service = localstack.start_redis(self._local_port(host, port, "redis"))
            self.services.append(service)
            self.say(f"redis: started on {service.address} (pid {service.pid})")

    def _kafka(self) -> None:
        host, port = _host_port(self.settings.kafka_url, 9092, "kafka")
        topics = list(
            dict.fromkeys(
                [
                    self.settings.observation_topic,
                    self.settings.alert_topic,
                    self.settings.test_alert_topic,
                    self.settings.connection_test_topic,
                    *([] if gcn_credentials(self.settings) else [self.settings.gcn_notice_topic]),
                ]
            )
        )
        if _answers(host, port):
            localstack.create_topics(f"{host}:{port}", topics)
            self.say(f"kafka: using the broker at {host}:{port}; topics {', '.join(topics)}")
            return
        service = localstack.start_kafka(self._local_port(host, port, "kafka"), topics=topics)
        self.services.append(service)
        self.say(
            f"kafka: started Tansu on {service.address} (pid {service.pid}); "
            f"topics {', '.join(topics)}"
        )

    def _mongo(self) -> None:
        url = self.settings.mongo_url.get_secret_value()  # may hold a password: never in a message
        try:
            host, port = parse_uri(url)["nodelist"][0]
        except (PyMongoError, ValueError, IndexError):
            raise StackError("mongo: cannot tell host and port from SNEWS_MONGO_URL") from None
        try:
            client: pymongo.MongoClient = pymongo.MongoClient(url, serverSelectionTimeoutMS=1000)
            with client:
                client.admin.command("ping")
            self.say(f"mongo: using the server at {host}:{port}")
            return
        except PyMongoError:
            pass
        service = localstack.start_mongo(self._local_port(host, port, "mongo"))
        self.services.append(service)
        self.say(f"mongo: started SecantusDB on {service.address} (pid {service.pid})")

    def _smtp(self) -> None:
        host, port = self.settings.smtp_host, self.settings.smtp_port
        if _answers(host, port):
            self.say(f"smtp: using the server at {host}:{port}")
            return
        service = localstack.start_smtp(self._local_port(host, port, "smtp"), mail_dir=MAIL_DIR)
        self.services.append(service)
        self.say(f"smtp: started aiosmtpd on {service.address} (pid {service.pid})")

    # processes

    @staticmethod
    def _not_started(entry: ProcfileEntry) -> RunningProcess:
        raise StackError(f"{entry.name}: start_processes has not run")

    def start_processes(
        self, entries: list[ProcfileEntry], *, cwd: Path, output: PrefixedOutput
    ) -> None:
        bin_dir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
            "SNEWS_MODE": self.settings.mode,
            "PYTHONUNBUFFERED": "1",
        }
        if _host_port(self.settings.kafka_url, 9092, "kafka")[0] in LOCAL_HOSTS:
            # A collaboration mode's topics on a local broker, which has no accounts.
            env["SNEWS_HOP_AUTH"] = "false"
        self._start = functools.partial(start_process, cwd=cwd, env=env, output=output)
        for entry in entries:
            if self.stopping.is_set():
                return
            running = self._start(entry)
            self.processes.append(running)
            self.say(f"{entry.name}: started `{entry.command}` (pid {running.process.pid})")

    def watch(self, *, strict: bool = False) -> int:
        """Until asked to stop (0). A process that ends by itself is started again after a
        pause that doubles while it keeps failing (a supervisor's job); with `strict` the
        stack stops instead (1)."""
        restart_at: dict[int, float] = {}  # index in self.processes -> when to start it again
        while not self.stopping.wait(WATCH_INTERVAL_S):
            for index, running in enumerate(self.processes):
                status = running.process.poll()
                if status is None:
                    continue
                if index not in restart_at:
                    running.reader.join(timeout=1)  # its last words first
                    if strict:
                        self.say(
                            f"{running.entry.name} exited with status {status}; stopping the stack"
                        )
                        return 1
                    ran_s = time.monotonic() - running.started
                    if ran_s >= RESTART_RESET_S:
                        running.restarts = 0
                    wait_s = capped_delay(running.restarts, RESTART_FIRST_S, RESTART_MAX_S)
                    running.restarts += 1
                    self.say(
                        f"{running.entry.name} exited with status {status} after "
                        f"{ran_s:.0f} s; starting it again in {wait_s:.1f} s"
                    )
                    restart_at[index] = time.monotonic() + wait_s
                elif time.monotonic() >= restart_at[index]:
                    del restart_at[index]
                    again = self._start(running.entry)
                    again.restarts = running.restarts
                    self.processes[index] = again
                    self.say(f"{running.entry.name}: started again (pid {again.process.pid})")
        return 0

    def stop(self) -> None:
        for running in reversed(self.processes):
            try:
                stop_group(running.process)
            except RuntimeError as error:  # one stuck process must not keep the rest running
                self.say(f"{running.entry.name}: {error}")
                continue
            running.reader.join(timeout=1)
            self.say(f"{running.entry.name}: stopped")
        self.processes.clear()
        for service in reversed(self.services):
            service.stop()
            self.say(f"{service.name}: stopped")
        self.services.clear()


# --- the command ---------------------------------------------------------------------------------


def _shown_host(address: str) -> str:
    """An address to type into a browser: a wildcard bind is reachable on 127.0.0.1."""
    return "127.0.0.1" if address in ("0.0.0.0", "") else address


def _instructions(settings: Settings) -> list[str]:
    flower_host = _shown_host(settings.flower_address)
    auth = " --no-auth" if settings.hop_auth == "false" else ""
    kafka = settings.kafka_url.rstrip("/")
    return [
        f"Flower:        http://{flower_host}:{settings.flower_port}",
        "test burst:    snews-tasks publish --example three-detector",
        f"watch alerts:  hop subscribe{auth} -j {kafka}/{settings.test_alert_topic}"
        f"   (real alerts: {settings.alert_topic})",
        f"console:       http://{_shown_host(settings.console_address)}:{settings.console_port}",
        f"feedback mail: {MAIL_DIR}/new/ holds one file per mail (when `up` started the "
        "SMTP server)",
        "health:        snews-tasks status",
        "stop:          Ctrl-C",
    ]


def run_stack(
    settings: Settings, *, only: str | None, services: bool, procfile: Path, strict: bool = False
) -> int:
    """`snews-tasks up`: 0 after Ctrl-C or SIGTERM, 1 when a process exited or could not start."""
    try:
        entries = select_entries(read_procfile(procfile), only)
    except StackError as error:
        print(f"snews-tasks up: {error}", file=sys.stderr)
        return 2
    width = max(len(name) for name in ["up", *(entry.name for entry in entries)])
    output = PrefixedOutput(sys.stdout, width)
    stack = Stack(settings, lambda text: output.line("up", text))
    previous = {
        signum: signal.signal(signum, lambda *_: stack.stopping.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    status = 0
    try:
        if services:
            stack.start_services()
        stack.start_processes(entries, cwd=procfile.resolve().parent, output=output)
        if not stack.stopping.is_set():
            for line in _instructions(settings):
                output.line("up", line)
            status = stack.watch(strict=strict)
    except RuntimeError as error:  # StackError, or a server localstack could not start
        output.line("up", f"cannot start: {error}")
        status = 1
    finally:
        stack.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status
