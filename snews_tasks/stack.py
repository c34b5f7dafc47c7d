"""`snews-tasks up`: the whole local system in one command.

First the services: Redis, a Kafka-protocol broker and a MongoDB-protocol
server, each reused when one already answers at its configured address, else
started on that port with `localstack`. Then every process of the Procfile
(the same topology docker-compose.yml runs), each in its own process group with
its output prefixed by its name. Ctrl-C or SIGTERM stops what this command
started, in reverse order. A process that dies stops the whole stack with a
non-zero status: restarting is docker-compose's job, and a local stack that
silently lost its coincidence worker would mislead whoever is testing with it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import urlparse

from .settings import Settings

if TYPE_CHECKING:
    from .localstack import Service

DEFAULT_PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"
LOCAL_HOSTS = ("127.0.0.1", "localhost")
STOP_TIMEOUT_S = 10.0
KILL_WAIT_S = 5.0  # SIGKILL cannot be ignored; only a process stuck in the kernel is slower
WATCH_INTERVAL_S = 0.2
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
        raise StackError(f"cannot read {path}: {error.strerror} (run from a checkout, "
                         "or pass --procfile)") from None
    return parse_procfile(text, str(path))


def select_entries(entries: list[ProcfileEntry], only: str | None) -> list[ProcfileEntry]:
    """The entries named in `only` (a comma list), in Procfile order; all when None."""
    if only is None:
        return entries
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    unknown = sorted(wanted - {entry.name for entry in entries})
    if unknown or not wanted:
        raise StackError(f"--only: unknown process {', '.join(unknown) or '(none given)'}; "
                         f"the Procfile has {', '.join(e.name for e in entries)}")
    return [entry for entry in entries if entry.name in wanted]


# --- process groups ------------------------------------------------------------------------------

def group_members(pgid: int) -> list[int]:
    """Live processes of a process group. Zombies count as gone: where PID 1 does not reap
    orphans (some containers) they stay in the table, dead, for good."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: signal 0 counts zombies too, the best there is
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        state, _parent, group = stat.rsplit(")", 1)[1].split()[:3]  # the name may hold spaces
        if int(group) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _group_ended(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_group(process: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group `process` leads, SIGKILL what is left after `timeout_s`."""
    _signal_group(process.pid, signal.SIGTERM)
    if not _group_ended(process.pid, timeout_s):
        _signal_group(process.pid, signal.SIGKILL)
        if not _group_ended(process.pid, KILL_WAIT_S):
            raise RuntimeError(f"process group {process.pid} survived SIGKILL")
    process.wait()


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


def start_process(entry: ProcfileEntry, *, cwd: Path, env: dict[str, str],
                  output: PrefixedOutput) -> RunningProcess:
    """`sh -c command` in a new session (so its group can be stopped whole), output relayed."""
    process = subprocess.Popen(["/bin/sh", "-c", entry.command], cwd=cwd, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True,
                               text=True, errors="replace", bufsize=1)

    def relay() -> None:
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
        self.services: list[Service] = []
        self.processes: list[RunningProcess] = []
        self.stopping = threading.Event()

    # services

    def start_services(self) -> None:
        for start in (self._redis, self._kafka, self._mongo):
            if self.stopping.is_set():
                return
            start()

    def _local_port(self, host: str, port: int, what: str) -> int:
        if host not in LOCAL_HOSTS:
            raise StackError(f"{what}: nothing answers at {host}:{port} and `up` only starts "
                             "servers on 127.0.0.1; start it or use --no-services")
        return port

    def _redis(self) -> None:
        import redis

        from . import localstack

        urls = (self.settings.broker_url, self.settings.result_backend,
                self.settings.state_redis_url)
        servers = sorted({_host_port(url, 6379, "redis") for url in urls
                          if url.startswith("redis://")})
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
        from . import localstack

        host, port = _host_port(self.settings.kafka_url, 9092, "kafka")
        topics = [self.settings.observation_topic, self.settings.alert_topic,
                  self.settings.test_alert_topic]
        if _answers(host, port):
            localstack.create_topics(f"{host}:{port}", topics)
            self.say(f"kafka: using the broker at {host}:{port}; topics {', '.join(topics)}")
            return
        service = localstack.start_kafka(self._local_port(host, port, "kafka"), topics=topics)
        self.services.append(service)
        self.say(f"kafka: started Tansu on {service.address} (pid {service.pid}); "
                 f"topics {', '.join(topics)}")

    def _mongo(self) -> None:
        import pymongo
        from pymongo.errors import PyMongoError
        from pymongo.uri_parser import parse_uri

        from . import localstack

        url = self.settings.mongo_url.reveal()  # may hold a password: never in a message
        try:
            host, port = parse_uri(url)["nodelist"][0]
        except (PyMongoError, ValueError, IndexError):
            raise StackError("mongo: cannot tell host and port from SNEWS_MONGO_URL") from None
        try:
            with pymongo.MongoClient(url, serverSelectionTimeoutMS=1000) as client:
                client.admin.command("ping")
            self.say(f"mongo: using the server at {host}:{port}")
            return
        except PyMongoError:
            pass
        service = localstack.start_mongo(self._local_port(host, port, "mongo"))
        self.services.append(service)
        self.say(f"mongo: started SecantusDB on {service.address} (pid {service.pid})")

    # processes

    def start_processes(self, entries: list[ProcfileEntry], *, cwd: Path,
                        output: PrefixedOutput) -> None:
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
               "SNEWS_MODE": self.settings.mode, "PYTHONUNBUFFERED": "1"}
        for entry in entries:
            if self.stopping.is_set():
                return
            running = start_process(entry, cwd=cwd, env=env, output=output)
            self.processes.append(running)
            self.say(f"{entry.name}: started `{entry.command}` (pid {running.process.pid})")

    def watch(self) -> int:
        """Until asked to stop (0) or until a process ends by itself (1)."""
        while not self.stopping.wait(WATCH_INTERVAL_S):
            for running in self.processes:
                status = running.process.poll()
                if status is not None:
                    running.reader.join(timeout=1)  # its last words first
                    self.say(f"{running.entry.name} exited with status {status}; "
                             "stopping the stack")
                    return 1
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

def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run the whole system locally: services and every Procfile process",
        description=(
            "Start Redis, a Kafka-protocol broker (Tansu) and a MongoDB-protocol server "
            "(SecantusDB) on their configured 127.0.0.1 ports unless one already answers there, "
            "then every Procfile process with its output prefixed by its name. Ctrl-C or "
            "SIGTERM stops everything this command started. If a process exits, the stack "
            "stops with status 1."
        ),
    )
    parser.add_argument("--only", metavar="NAMES",
                        help="comma-separated Procfile processes to run (default: all)")
    parser.add_argument("--no-services", action="store_true",
                        help="start no servers: Redis, Kafka and MongoDB already run")
    parser.add_argument("--procfile", type=Path, default=DEFAULT_PROCFILE,
                        help="the process list (default: the checkout's Procfile)")
    parser.set_defaults(handler=run)


def _instructions(settings: Settings) -> list[str]:
    flower_host = "127.0.0.1" if settings.flower_address in ("0.0.0.0", "") else \
        settings.flower_address
    auth = " --no-auth" if settings.hop_auth == "false" else ""
    kafka = settings.kafka_url.rstrip("/")
    return [
        f"Flower:        http://{flower_host}:{settings.flower_port}",
        "test burst:    snews-tasks publish --example three-detector",
        f"watch alerts:  hop subscribe{auth} -j {kafka}/{settings.test_alert_topic}"
        f"   (real alerts: {settings.alert_topic})",
        "health:        snews-tasks status",
        "stop:          Ctrl-C",
    ]


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        entries = select_entries(read_procfile(args.procfile), args.only)
    except StackError as error:
        print(f"snews-tasks up: {error}", file=sys.stderr)
        return 2
    width = max(len(name) for name in ["up", *(entry.name for entry in entries)])
    output = PrefixedOutput(sys.stdout, width)
    stack = Stack(settings, lambda text: output.line("up", text))
    previous = {signum: signal.signal(signum, lambda *_: stack.stopping.set())
                for signum in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        if not args.no_services:
            stack.start_services()
        stack.start_processes(entries, cwd=args.procfile.resolve().parent, output=output)
        if not stack.stopping.is_set():
            for line in _instructions(settings):
                output.line("up", line)
            status = stack.watch()
    except RuntimeError as error:  # StackError, or a server localstack could not start
        output.line("up", f"cannot start: {error}")
        status = 1
    finally:
        stack.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status
