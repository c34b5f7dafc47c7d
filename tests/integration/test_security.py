"""Security defaults, checked on running processes rather than on configuration files.

* Every socket the local stack listens on is bound to 127.0.0.1.
* Flower asks for a password outside local mode; locally on 127.0.0.1 it need not.
  (`load_settings('production')` without SNEWS_FLOWER_BASIC_AUTH failing is
  tests/unit/test_settings.py::test_production_needs_flower_auth_from_the_environment.)
* Secrets never reach a log, the operator commands' output, MongoDB or Redis.
* Nothing read from Kafka can act as an admin command: a detector can only add
  or retract its own observations, and re-driving failures is CLI-only.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import ipaddress
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid as uuidlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import pymongo
import pytest
import redis
from bson import json_util
from hop.io import Stream
from hop.models import JSONBlob

from snews_tasks.testing import builders as h
from snews_tasks.testing.pipeline import (REPO, VENV_BIN, S, ClockedSlackApi, Pipeline,  # noqa: F401  (fixtures)
                      live_observation, pipelines, slack, start_ingest)
from snews_tasks.entrypoints import localstack
from snews_tasks.adapters.archive import Archive
from snews_tasks.core.engine import LIVE
from snews_tasks.adapters.failures import FailureLog
from snews_tasks.adapters.redis_keys import KEYS
from snews_tasks.entrypoints.ingest import TASK_FOR_TIER
from snews_tasks.core.processing import Processor
from snews_tasks.settings import load_settings
from snews_tasks.entrypoints.process_groups import group_members, stop_group
from snews_tasks.core.routing import DELIVERIES, TaskName
from snews_tasks.testing.services import writer_service

pytestmark = pytest.mark.integration

LOOPBACK = ipaddress.ip_address("127.0.0.1")
READY_TIMEOUT_S = 60.0  # only a hang reaches it
CLI_TIMEOUT_S = 60.0
TEST_FLOWER_AUTH = "test:test-only-password"  # config/test.env's throwaway credential
#: `up` announces each server and process it starts: "up | NAME: started ... (pid N)".
_STARTED = re.compile(r"^up\s+\| ([\w-]+): started .*\(pid (\d+)\)", re.MULTILINE)
_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")
TCP_LISTEN, UDP_UNCONNECTED = "0A", "07"  # socket states in /proc/net/*


# --- sockets, by /proc ----------------------------------------------------------------------------

def _address(hex_address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """/proc/net's "0100007F:1F90" (host byte order, 32-bit words) as (address, port)."""
    host, port = hex_address.split(":")
    words = [bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, len(host), 8)]
    return ipaddress.ip_address(b"".join(words)), int(port, 16)


def listening_sockets(pgid: int) -> set[tuple[str, str, int]]:
    """(protocol, address, port) of each TCP listener and unconnected UDP socket of a group."""
    inodes = set()
    for pid in group_members(pgid):
        with contextlib.suppress(OSError):  # a process may exit while we look
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    match = _SOCKET_LINK.fullmatch(os.readlink(fd))
                    if match:
                        inodes.add(match.group(1))
    found = set()
    for protocol in ("tcp", "tcp6", "udp", "udp6"):
        listening = TCP_LISTEN if protocol.startswith("tcp") else UDP_UNCONNECTED
        for line in Path(f"/proc/net/{protocol}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == listening and fields[9] in inodes:
                address, port = _address(fields[1])
                found.add((protocol, str(address), port))
    return found


def started_pids(output: str) -> dict[str, int]:
    return {name: int(pid) for name, pid in _STARTED.findall(output)}


def test_everything_the_local_stack_starts_listens_on_loopback_only(tmp_path: Path) -> None:
    """`snews-tasks up` in local mode: its servers, workers, beat, ingest, Flower and the
    console."""
    ports = {name: localstack.free_port()
             for name in ("redis", "kafka", "mongo", "smtp", "flower", "console")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNEWS_")}
    env.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "SNEWS_BROKER_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "SNEWS_RESULT_BACKEND": f"redis://127.0.0.1:{ports['redis']}/0",
        "SNEWS_STATE_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/1",
        "SNEWS_KAFKA_URL": f"kafka://127.0.0.1:{ports['kafka']}",
        "SNEWS_MONGO_URL": f"mongodb://127.0.0.1:{ports['mongo']}",
        "SNEWS_FLOWER_PORT": str(ports["flower"]),
        "SNEWS_SMTP_PORT": str(ports["smtp"]),
        "SNEWS_CONSOLE_PORT": str(ports["console"]),
        "TMPDIR": str(tmp_path),  # beat's schedule file
    })
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen([str(VENV_BIN / "snews-tasks"), "--mode", "local", "up"], env=env,
                              cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    state = redis.Redis(host="127.0.0.1", port=ports["redis"], db=1)
    try:
        def ready() -> bool:
            output = log_path.read_text(errors="replace")
            return (output.count(" ready.") >= 3  # the coincidence, notify and localize workers
                    and "beat: Starting" in output
                    and localstack._port_answers(ports["flower"])
                    and localstack._port_answers(ports["console"])
                    and state.exists(KEYS.ingest_last_poll) == 1)

        localstack.wait_until(ready, READY_TIMEOUT_S, "the local stack", process=up,
                              log_path=log_path)
        pids = started_pids(log_path.read_text())
        assert set(pids) == {"redis", "kafka", "mongo", "smtp", "ingest", "coincidence",
                             "notify", "localize", "beat", "flower", "console"}
        listeners = {name: listening_sockets(pid) for name, pid in {**pids, "up": up.pid}.items()}
        for name, port in ports.items():  # the check sees the sockets we know of
            assert ("tcp", str(LOOPBACK), port) in listeners[name]
        exposed = {name: sockets for name, sockets in listeners.items()
                   if any(address != str(LOOPBACK) for _, address, _ in sockets)}
        assert exposed == {}, f"listening beyond 127.0.0.1: {exposed}"

        # Local mode on 127.0.0.1: Flower's API answers without a password.
        assert http_status(f"http://127.0.0.1:{ports['flower']}/api/workers") == 200
        assert http_status(f"http://127.0.0.1:{ports['console']}/detectors") == 200
    finally:
        stop_group(up, timeout_s=60)  # `up` stops what it started, then exits
        state.close()
        for pid in started_pids(log_path.read_text(errors="replace")).values():
            if group_members(pid):  # only if `up` itself could not stop it
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


# --- Flower ---------------------------------------------------------------------------------------

def http_status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@contextlib.contextmanager
def running_flower(env: Mapping[str, str], mode: str, log_path: Path) -> Iterator[int]:
    """`snews-tasks --mode MODE flower` on a free port; yields the port once it answers."""
    port = localstack.free_port()
    with log_path.open("wb") as log:
        flower = subprocess.Popen(
            [str(VENV_BIN / "snews-tasks"), "--mode", mode, "flower"],
            env={**env, "SNEWS_FLOWER_PORT": str(port)}, cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        localstack.wait_until(lambda: localstack._port_answers(port), READY_TIMEOUT_S,
                              f"Flower ({mode} mode)", process=flower, log_path=log_path)
        yield port
    finally:
        stop_group(flower)


def flower_env(broker_url: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNEWS_")}
    env.update({"PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
                "SNEWS_BROKER_URL": broker_url, "SNEWS_RESULT_BACKEND": broker_url,
                "SNEWS_STATE_REDIS_URL": broker_url, **settings})
    return env


def test_flower_outside_local_mode_requires_its_password(new_redis_url, tmp_path: Path) -> None:
    with running_flower(flower_env(new_redis_url()), "test", tmp_path / "flower.log") as port:
        base = f"http://127.0.0.1:{port}"
        assert http_status(f"{base}/") == 401
        assert http_status(f"{base}/api/workers") == 401
        assert http_status(f"{base}/api/workers", "test:wrong-password") == 401
        assert http_status(f"{base}/api/workers", TEST_FLOWER_AUTH) == 200
        assert http_status(f"{base}/", TEST_FLOWER_AUTH) == 200


def test_flower_without_a_password_refuses_to_start_beyond_loopback(new_redis_url) -> None:
    """Local mode drops the password only on 127.0.0.1; elsewhere the command stops first."""
    env = flower_env(new_redis_url(), SNEWS_FLOWER_ADDRESS="0.0.0.0")
    refused = subprocess.run([str(VENV_BIN / "snews-tasks"), "--mode", "local", "flower"],
                             env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=CLI_TIMEOUT_S)
    assert refused.returncode == 2
    assert "SNEWS_FLOWER_BASIC_AUTH: required" in refused.stderr


# --- secrets --------------------------------------------------------------------------------------

def create_mongo_user(mongo_url: str, user: str, password: str) -> str:
    """A user on the session's SecantusDB; returns the URL that logs in as it."""
    with pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=10_000) as client:
        client.admin.command("createUser", user, pwd=password, roles=["root"])
    host_port = mongo_url.removeprefix("mongodb://")
    wrong = f"mongodb://{user}:not-{password}@{host_port}"
    with pymongo.MongoClient(wrong, serverSelectionTimeoutMS=10_000) as client:
        with pytest.raises(pymongo.errors.OperationFailure):  # the password is really checked
            client.admin.command("ping")
    return f"mongodb://{user}:{password}@{host_port}"


def redis_dump(client: redis.Redis) -> str:
    """Every key and value of one Redis database, as text to search."""
    parts = []
    for key in client.scan_iter():
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        value = {"string": lambda: client.get(key), "hash": lambda: client.hgetall(key),
                 "list": lambda: client.lrange(key, 0, -1), "set": lambda: client.smembers(key),
                 "zset": lambda: client.zrange(key, 0, -1)}[kind]()
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


def cli_outputs(pipeline: Pipeline, *commands: tuple[str, ...]) -> dict[str, str]:
    """stdout and stderr of each `snews-tasks COMMAND`, run side by side, whatever its exit
    status (`status` exits 1 while a failure is recorded)."""
    running = {" ".join(command): subprocess.Popen(
        [str(VENV_BIN / "snews-tasks"), *command], env=pipeline.env, cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for command in commands}
    return {name: process.communicate(timeout=CLI_TIMEOUT_S)[0]
            for name, process in running.items()}


def test_secrets_appear_in_no_log_output_document_or_key(
        pipelines, slack: ClockedSlackApi, mongo_service: localstack.Service,
        kafka_service: localstack.Service, tmp_path: Path) -> None:
    marker = uuidlib.uuid4().hex[:12]
    slack_token = f"xoxb-SECRET-{marker}"
    mongo_password = f"MONGO-PASSWORD-{marker}"
    flower_password = f"FLOWER-PASSWORD-{marker}"
    secrets = (slack_token, mongo_password, flower_password)
    topic = f"observations-{marker}"
    localstack.create_topics(kafka_service.address, [topic])
    mongo_url = create_mongo_user(mongo_service.url, f"snews-{marker}", mongo_password)
    pipeline = pipelines(mongo_url=mongo_url, settings={
        "SNEWS_SLACK_TOKEN": slack_token, "SNEWS_FLOWER_BASIC_AUTH": f"ops:{flower_password}",
        "SNEWS_OBSERVATION_TOPIC": topic})
    assert load_settings(environ=pipeline.env).slack_token.get_secret_value() == slack_token
    pipeline.start_workers("coincidence", "notify")
    start_ingest(pipeline)
    slack.down()  # every post fails: retried, logged, then recorded with its error

    with running_flower(pipeline.env, "test", tmp_path / "flower.log") as flower_port:
        assert http_status(f"http://127.0.0.1:{flower_port}/api/workers",
                           f"ops:{flower_password}") == 200
        now = time.time_ns()
        with Stream(auth=False).open(f"{kafka_service.url}/{topic}", "w",
                                     automatic_offload=False) as writer:
            for message in (live_observation("IceCube", now - 30 * S),
                            live_observation("KM3NeT", now - 28 * S)):
                writer.write(JSONBlob(content=message.to_dict()))
            writer.write(JSONBlob(content={"tier": "CoincidenceTier", "detector_name": "JUNO"}))
        pipeline.wait_until(lambda: pipeline.archive.failed_notifications.count_documents({}),
                            "the Slack failure record")
        pipeline.drain()
        outputs = cli_outputs(pipeline, ("status", "--timeout", "0.5"),
                              ("status", "--json", "--timeout", "0.5"),
                              ("failed", "list", "--json"))
    assert "alert_slack:" in outputs["failed list --json"]
    assert "1 failed" in outputs["status --timeout 0.5"]
    assert json.loads(outputs["status --json --timeout 0.5"])["healthy"] is False
    logs = {path.name: path.read_text(errors="replace") for path in tmp_path.rglob("*.log")}
    assert {"coincidence-0.log", "notify-1.log", "ingest-2.log", "flower.log"} <= set(logs)
    assert "attempt 1 failed" in logs["notify-1.log"]  # the Slack failure was logged

    archive = pipeline.archive
    documents = {name: json_util.dumps(list(archive[name].find()))
                 for name in archive.list_collection_names()}
    assert {"observations", "alerts", "rejected", "failed_notifications"} <= set(documents)
    stores = {"state redis": redis_dump(pipeline.state.client),
              "broker redis": redis_dump(pipeline.broker)}

    for where, text in {**outputs, **logs, **documents, **stores}.items():
        for secret in secrets:
            assert secret not in text, f"{secret} found in {where}"


# --- no admin operation from Kafka ----------------------------------------------------------------

def test_messages_that_look_like_commands_do_no_more_than_a_message_may(
        redis_url: str, mongo_service: localstack.Service) -> None:
    """Commands, a retraction of everything by a stranger, a replayed uuid: state and failure
    records stay as they were; only the owner's own retraction acts."""
    sent = h.Sent()
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    writer = writer_service(state, sent, Processor(h.settings()))
    now = h.T0 + 3600 * S
    super_k, icecube = h.observation("Super-K", 0), h.observation("IceCube", 1)
    for message in (super_k, icecube):
        writer.handle(message.to_dict(), now_ns=now)
    [alert] = [document for task, document in sent if task == "snews.kafka.publish_alert"]
    mongo = pymongo.MongoClient(mongo_service.url, serverSelectionTimeoutMS=10_000)
    failures = FailureLog(Archive(mongo, f"snews-{uuidlib.uuid4().hex[:10]}"), state)
    failures.record_failure(kind="alert_slack", key=f"{alert['alert_id']}:1", payload=alert,
                            error="SlackApiError: service_unavailable", attempts=4)
    coincidences, cached = writer.state.coincidences(LIVE), writer.state.observations(LIVE)
    failed = failures.list_failures()
    sent.clear()

    commands = [
        {"command": "reset"},
        {"command": "failed retry", "ids": [f"alert_slack:{alert['alert_id']}:1"], "all": True},
        {**h.heartbeat("JUNO", 0).to_dict(), "meta": {"command": "failed retry --all"}},
        {**h.retraction("JUNO", latest_n=1_000_000).to_dict(), "retraction_reason": "reset"},
        h.retraction("KamLAND", target=super_k.uuid).to_dict(),
        {**h.observation("JUNO", 2).to_dict(), "uuid": icecube.uuid},  # a replayed uuid
    ]
    outcomes = [writer.handle(command, now_ns=now) for command in commands]
    try:
        assert [outcome.split(":")[0] for outcome in outcomes] == [
            "rejected", "rejected", "rejected", "retraction matched nothing", "rejected",
            "duplicate"]
        assert "a detector retracts only its own" in outcomes[4]
        assert writer.state.coincidences(LIVE) == coincidences
        assert writer.state.observations(LIVE) == cached
        assert failures.list_failures() == failed
        assert failures.list_failures("redriven") == []
        assert {task for task, _ in sent} == {"snews.storage.store_reject",
                                              "snews.storage.store_observations"}

        # The owner's retraction does act: the test above could have seen a change.
        writer.handle(h.retraction("Super-K", latest_n=1_000_000).to_dict(), now_ns=now)
        assert [o.uuid for o in writer.state.observations(LIVE)] == [icecube.uuid]
        assert [d["alert_type"] for t, d in sent if t == "snews.kafka.publish_alert"] == [
            "RETRACTION"]
    finally:
        mongo.drop_database(failures.collection.database.name)
        mongo.close()


def _uses(path: Path, names: set[str]) -> bool:
    """Whether the module reads any of `names` as a variable or calls it as a method."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in names:
            return True
        if isinstance(node, ast.Name) and node.id in names and isinstance(node.ctx, ast.Load):
            return True
    return False


def test_only_the_operator_cli_can_redrive_failures() -> None:
    """What a Kafka message can reach: the ingest's tasks (a connection test: its echo and its
    archive record), then the writer's deliveries (and the localize task's result, back to
    the writer; a significance-tier alert's deliveries). None of them lists or re-drives
    failure records; only `snews-tasks failed` does."""
    ingest = Path(REPO / "snews_tasks" / "entrypoints" / "ingest.py").read_text()
    assert set(re.findall(r"TaskName\.([A-Z_]+)", ingest)) == {
        "PROCESS", "STORE_HEARTBEAT", "STORE_OBSERVATION", "STORE_REJECT",
        "ECHO_CONNECTION_TEST"}
    assert set(TASK_FOR_TIER.values()) | {TaskName.STORE_REJECT} == {
        TaskName.PROCESS, "snews.storage.store_heartbeat", "snews.storage.store_observation",
        TaskName.STORE_REJECT}
    assert {task for tasks in DELIVERIES.values() for task in tasks} == {
        "snews.storage.store_alert", "snews.storage.store_observations", TaskName.STORE_REJECT,
        "snews.kafka.publish_alert", "snews.slack.post_alert", "snews.localization.localize",
        "snews.gcn.publish_notice"}
    package = REPO / "snews_tasks"
    def users(names: set[str]) -> set[str]:
        return {str(path.relative_to(package)) for path in package.rglob("*.py")
                if _uses(path, names)}

    assert users({"mark_redriven", "redrive_task"}) == {"entrypoints/failed.py"}
    assert users({"list_failures"}) == {"entrypoints/failed.py", "entrypoints/status.py"}
