"""`snews-tasks ingest`: the observation topic into the Celery queues.

Each message is decoded and validated here, so a bad one is rejected at the door
and never occupies the serial coincidence worker. What one poll returns (one
message when traffic is light) gives one storage task for each heartbeat,
significance or timing observation and each reject (with its raw payload);
its CoincidenceTier messages and retractions go, in order, into one
coincidence task, sent at once when the writer's queue is empty. While the
writer is busy they are held and gathered with the next polls' (up to
`MAX_BATCH`), so under load each task carries as much as the writer could
not take meanwhile. A connection test of snews-pt (`core.connection_test`)
gives its echo task, at most `connection_test_echoes_per_minute` per detector,
and its archive record; it is neither a heartbeat nor an observation.

Delivery: every task carries a receipt id, set in the state Redis when a
worker starts it (`tasks/receipts.py`). A poll's offsets are committed only
once every task made from it, and from the polls before it, has started; a
task not started a while after its send (a second for the writer's batches)
while its queue is empty was lost between the Celery broker and a worker (a
Redis crash in the moment kombu moves it, or a writer that froze right after
taking it) and is sent again. A crash of the ingest re-delivers what was
not committed; tasks are idempotent by uuid. A send that fails is retried
until it succeeds or the process stops, never skipped and never committed.
Offsets are not auto-committed: librdkafka's close then waits forever for a
broker that is down, and SIGTERM must work during an outage.

The topic is read by `adapters.kafka_source`. Liveness for `snews-tasks status`
goes to the state Redis: the time of the latest poll, empty or not, and the
counts of messages received, enqueued (valid, handed to a queue) and rejected
(archived as rejects).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid as uuidlib
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Protocol

import confluent_kafka
import redis
from kombu.exceptions import OperationalError

from ..adapters.kafka_source import (
    CONNECTION_ERRORS,
    MAX_BATCH,
    OBSERVATION_FORMATS,
    ErrorCallback,
    KafkaSource,
    Source,
    SourceFactory,
    SourceUnavailable,
    hop_format,
)
from ..adapters.receipts import (
    RECEIPT_HEADER,
    RESEND_AFTER_S,
    RESEND_WRITER_BATCH_AFTER_S,
    Receipts,
)
from ..adapters.redis_clients import redis_client
from ..adapters.redis_keys import KEYS
from ..core.backoff import Backoff
from ..core.connection_test import EchoLimiter, archived, echo_of, is_connection_test
from ..core.errors import MessageError
from ..core.heartbeat_feedback import heartbeat_from_record
from ..core.messages import Message, Tier
from ..core.payloads import reject_document
from ..core.processing import Processor
from ..core.routing import TaskName
from ..core.times import format_time_ns
from ..settings import Settings
from ..tasks.sender import CelerySender, queue_is_empty

log = logging.getLogger(__name__)

COUNTERS = ("received", "enqueued", "rejected")
TASK_FOR_TIER = {
    Tier.COINCIDENCE: TaskName.PROCESS,
    Tier.RETRACTION: TaskName.PROCESS,
    Tier.HEARTBEAT: TaskName.STORE_HEARTBEAT,
    Tier.SIGNIFICANCE: TaskName.STORE_OBSERVATION,
    Tier.TIMING: TaskName.STORE_OBSERVATION,
}

POLL_TIMEOUT_S = 0.5  # bounds how stale last_poll gets and how long a SIGTERM waits
CONFIRM_POLL_TIMEOUT_S = 0.02  # the poll's wait while tasks await their receipts
RECEIPT_CHECK_S = 0.02
RECEIPT_CHECK_MAX = 200  # receipts read per check, the oldest first (they hold the commit)
MAX_UNCONFIRMED = 100_000  # tasks sent and not started: past this, reading pauses
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
#: The Celery broker refusing a send: a Sentinel failover takes about 2 s, so try often.
ENQUEUE_RETRY_FIRST_S = 0.1
ENQUEUE_RETRY_MAX_S = 0.5
#: The Celery broker being down: kombu wraps the connection errors, redis-py may leak through.
ENQUEUE_ERRORS = (OperationalError, redis.RedisError, OSError)


class Outage:
    """Logs when something becomes unreachable and when it is back: once each, not per poll."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None

    @property
    def active(self) -> bool:
        return self.since is not None

    def down(self, reason: object) -> None:
        if self.since is None:
            self.since = time.time()
            started = datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds")
            log.error("%s unreachable since %s: %s", self.what, started, reason)

    def up(self) -> bool:
        """True when this ends an outage."""
        if self.since is None:
            return False
        log.warning("%s reachable again after %.0f s", self.what, time.time() - self.since)
        self.since = None
        return True


def resend_after(task: str) -> float:
    return RESEND_WRITER_BATCH_AFTER_S if task == TaskName.PROCESS else RESEND_AFTER_S


def task_for(message: Message, received_ns: int) -> tuple[TaskName, dict]:
    """The task and its document for a valid message; storage documents get the receive time."""
    task = TASK_FOR_TIER[message.tier]
    document = message.to_dict()
    if task is not TaskName.PROCESS:
        document["received_time_utc"] = format_time_ns(received_ns)
    return task, document


class Broker(Protocol):
    """The Celery broker as ingest needs it; `CeleryBroker` is the real one."""

    def send(self, task: str, argument: object, headers: dict) -> None: ...

    def queue_is_empty(self, task: str) -> bool: ...


@dataclass
class Sent:
    """A task sent and not yet known to have started."""

    receipt: str
    task: str
    argument: object
    sent_at: float = field(default_factory=time.monotonic)
    started: bool = False


@dataclass
class Poll:
    """The tasks made from one poll, and the offsets they let us commit once all started."""

    offsets: dict[tuple[str, int], int]
    tasks: list[Sent]


class Ingest:
    """The read-decode-enqueue-commit loop; `stop()` ends it after the current poll."""

    def __init__(self, settings: Settings, consumer_factory: SourceFactory, broker: Broker) -> None:
        self.processor = Processor(settings)
        self.echo_limiter = EchoLimiter(settings.connection_test_echoes_per_minute)
        self.consumer_factory = consumer_factory
        self.celery = broker
        self.state = redis_client(
            settings.state_redis_url, master_name=settings.redis_sentinel_master, socket_timeout=2
        )
        self.receipts = Receipts(self.state)
        self.unconfirmed: deque[Poll] = deque()
        self._unconfirmed_tasks = 0  # tasks in `unconfirmed`, kept so the loop need not count
        # Polls handled since the last coincidence task was sent, and its messages held back.
        self._gathering = Poll({}, [])
        self._held: list[dict] = []
        self._next_receipt_check = 0.0
        self.broker = Outage("observation broker")
        self.celery_broker = Outage("Celery broker")
        self.state_redis = Outage("state Redis (ingest liveness)")
        self._stopping = threading.Event()
        self._connection_trouble = False
        # After a Celery broker outage: every task sent before it and not started, again.
        self._outage_began = 0.0
        self._resend_sent_before: float | None = None
        self._read_error: str | None = None  # the last one logged, until a message is read

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        """Open the source (retrying while the broker is down) and consume until stopped."""
        backoff = Backoff(BACKOFF_FIRST_S, BACKOFF_MAX_S)
        while not self._stopping.is_set():
            try:
                source = self.consumer_factory(self._on_kafka_error)
            except SourceUnavailable as error:
                self.broker.down(error)
                self._stopping.wait(backoff.delay())
                continue
            self.broker.up()
            try:
                self._consume(source)
            finally:
                source.close()
        self.state.close()

    def _on_kafka_error(self, error: confluent_kafka.KafkaError) -> None:
        """Runs inside poll(); connection errors are judged by a probe, others are logged."""
        if error.code() in CONNECTION_ERRORS:
            self._connection_trouble = True
        else:
            log.warning("Kafka client: %s", error.str())

    def _consume(self, source: Source) -> None:
        probe_backoff = Backoff(BACKOFF_FIRST_S, BACKOFF_MAX_S)
        next_probe = 0.0
        while not self._stopping.is_set():
            waiting = self._unconfirmed_tasks
            if waiting >= MAX_UNCONFIRMED:  # the workers are gone: leave the rest in Kafka
                self._stopping.wait(POLL_TIMEOUT_S)
                batch = []
            else:
                batch = source.poll(
                    CONFIRM_POLL_TIMEOUT_S if waiting or self._held else POLL_TIMEOUT_S
                )
            counts: dict[str, int] = {}
            readable = [m for m in batch if m.error() is None]
            for message in batch:
                error = message.error()
                if error is not None:
                    self._on_read_error(error)
            if readable:
                self.broker.up()
                self._connection_trouble = False
                self._read_error = None
                counts = self._handle(readable)
            else:
                self._release()
            self._confirm(source)
            self._report(counts)
            if (self._connection_trouble or self.broker.active) and time.monotonic() >= next_probe:
                try:
                    source.probe()
                except SourceUnavailable as error:
                    self.broker.down(error)
                    next_probe = time.monotonic() + probe_backoff.delay()
                else:
                    self.broker.up()
                    self._connection_trouble = False
                    probe_backoff.reset()

    def _on_read_error(self, error: confluent_kafka.KafkaError) -> None:
        """Logged once until a message is read again; the probe checks the topic meanwhile."""
        self._connection_trouble = True
        if error.str() != self._read_error:
            self._read_error = error.str()
            log.warning("reading the observation topic: %s", error.str())

    def _decode(self, message: confluent_kafka.Message) -> dict[str, Any]:
        written_as = hop_format(message)
        if written_as not in OBSERVATION_FORMATS:
            raise MessageError(
                "format",
                f"hop message format {written_as!r} does not carry "
                "an observation message (expected blob or json)",
            )
        return self.processor.decode(message.value() or b"")

    def _connection_test(self, data: dict[str, Any], received_ns: int) -> list[tuple[str, object]]:
        """snews-pt's connection test: its echo (unless the detector's echoes this minute are
        used up) and its archive record; never a heartbeat or an observation."""
        echo = echo_of(data, detectors=self.processor.settings.detectors)
        detector = str(echo["detector_name"])
        echoed = self.echo_limiter.allow(detector, time.monotonic())
        if not echoed:
            log.warning(
                "connection test from %s not echoed: %d echoes in the last minute already",
                detector,
                self.echo_limiter.per_minute,
            )
        record = archived(data, received_time_utc=format_time_ns(received_ns), echoed=echoed)
        tasks: list[tuple[str, object]] = [(TaskName.STORE_OBSERVATION, record)]
        if echoed:
            tasks.append((TaskName.ECHO_CONNECTION_TEST, echo))
        return tasks

    def _check_heartbeat(self, document: dict) -> None:
        """A heartbeat the feedback rule could not use (no sent time, one beyond the future
        tolerance of its receive time) is rejected like any bad message, so it never reaches
        the detector's status or statistics."""
        heartbeat_from_record(
            document,
            detectors=self.processor.settings.detectors,
            max_future_skew_s=self.processor.settings.max_future_skew_s,
        )

    def _handle(self, messages: list[confluent_kafka.Message]) -> dict[str, int]:
        received_ns = time.time_ns()
        tasks: list[tuple[str, object]] = []
        coincidence: list[dict] = []
        counts = {"received": len(messages), "enqueued": 0, "rejected": 0}
        for message in messages:
            try:
                data = self._decode(message)
                if is_connection_test(data):
                    tasks += self._connection_test(data, received_ns)
                    counts["enqueued"] += 1
                    continue
                parsed = self.processor.validate(data)
                task, document = task_for(parsed, received_ns)
                if parsed.tier is Tier.HEARTBEAT:
                    self._check_heartbeat(document)
            except MessageError as error:
                log.warning(
                    "rejected message at %s offset %d: %s", message.topic(), message.offset(), error
                )
                tasks.append(
                    (
                        TaskName.STORE_REJECT,
                        reject_document(
                            message.value() or b"", error, received_ns, topic=message.topic()
                        ),
                    )
                )
                counts["rejected"] += 1
                continue
            counts["enqueued"] += 1
            log.info(
                "%s from %s (uuid %s) -> %s",
                parsed.tier.value,
                parsed.detector_name,
                parsed.uuid,
                task,
            )
            if task is TaskName.PROCESS:
                coincidence.append(document)
            else:
                tasks.append((task, document))
        sent = [Sent(uuidlib.uuid4().hex, task, argument) for task, argument in tasks]
        for one in sent:
            if not self._enqueue(one):
                return {}  # stopping: not committed, so it is read again after the restart
        self._gathering.offsets.update(
            {(str(m.topic()), int(m.partition() or 0)): int(m.offset() or 0) for m in messages}
        )
        self._gathering.tasks += sent
        self._held += coincidence
        self._release()
        return counts

    def _release(self) -> None:
        """Send the held coincidence messages as one task once the writer has taken the one
        before (its queue is empty) or the batch is full; until then keep gathering, so under
        load the batches grow to what the writer can take, and a light load waits for nothing."""
        if self._held and (len(self._held) >= MAX_BATCH or self._writer_waiting()):
            task = Sent(uuidlib.uuid4().hex, TaskName.PROCESS, self._held)
            if not self._enqueue(task):
                return  # stopping: not committed, so it is read again after the restart
            self._gathering.tasks.insert(0, task)
            self._held = []
        if not self._held and (self._gathering.offsets or self._gathering.tasks):
            self.unconfirmed.append(self._gathering)
            self._unconfirmed_tasks += len(self._gathering.tasks)
            self._gathering = Poll({}, [])

    def _writer_waiting(self) -> bool:
        try:
            return self.celery.queue_is_empty(TaskName.PROCESS)
        except ENQUEUE_ERRORS:
            return True  # the send then retries until the broker is back

    def _enqueue(self, task: Sent) -> bool:
        """Send until the broker takes it; False only if asked to stop meanwhile."""
        backoff = Backoff(ENQUEUE_RETRY_FIRST_S, ENQUEUE_RETRY_MAX_S)
        while True:
            try:
                self.celery.send(task.task, task.argument, {RECEIPT_HEADER: task.receipt})
            except ENQUEUE_ERRORS as error:
                if not self.celery_broker.active:
                    self._outage_began = time.monotonic()
                self.celery_broker.down(f"{type(error).__name__}: {error}")
                if self._stopping.wait(backoff.delay()):
                    return False
            else:
                if self.celery_broker.up():
                    # A failover may have lost what was sent just before it: send again now
                    # every task sent before the outage and not known to have started.
                    self._resend_sent_before = self._outage_began
                task.sent_at = time.monotonic()
                return True

    def _confirm(self, source: Source) -> None:
        """Read the receipts of the oldest tasks; commit the polls whose tasks have all started
        and send again those lost on the way."""
        now = time.monotonic()
        if not self.unconfirmed or now < self._next_receipt_check:
            return
        self._next_receipt_check = now + RECEIPT_CHECK_S
        waiting = list(
            islice(
                (t for p in self.unconfirmed for t in p.tasks if not t.started), RECEIPT_CHECK_MAX
            )
        )
        try:
            started = self.receipts.received([t.receipt for t in waiting])
        except redis.RedisError as error:
            self.state_redis.down(f"{type(error).__name__}: {error}")
            return
        for task, done in zip(waiting, started, strict=True):
            task.started = done
        offsets: dict[tuple[str, int], int] = {}
        while self.unconfirmed and all(t.started for t in self.unconfirmed[0].tasks):
            confirmed = self.unconfirmed.popleft()
            self._unconfirmed_tasks -= len(confirmed.tasks)
            offsets.update(confirmed.offsets)
        if offsets:
            source.commit(offsets)
        sent_before, self._resend_sent_before = self._resend_sent_before, None
        for task in waiting:
            if task.started:
                continue
            if sent_before is not None and task.sent_at <= sent_before:
                self._log_resend(task, "the Celery broker came back")
                self._enqueue(task)
            elif now - task.sent_at >= resend_after(task.task):
                self._resend(task)

    def _resend(self, task: Sent) -> None:
        try:
            if not self.celery.queue_is_empty(task.task):
                # Perhaps still in line: look again in a tenth of the wait, not a whole one
                # (the queue may empty a moment later, a standby writer having taken over).
                task.sent_at = time.monotonic() - 0.9 * resend_after(task.task)
                return
        except ENQUEUE_ERRORS as error:
            self.celery_broker.down(f"{type(error).__name__}: {error}")
            return
        self._log_resend(
            task, f"{resend_after(task.task):g} s after it was sent, with its queue empty"
        )
        self._enqueue(task)

    @staticmethod
    def _log_resend(task: Sent, why: str) -> None:
        documents = task.argument if isinstance(task.argument, list) else [task.argument]
        log.warning(
            "%s (receipt %s) not started, %s: sending it again (uuids: %s)",
            task.task,
            task.receipt,
            why,
            " ".join(str(d.get("uuid")) for d in documents if isinstance(d, dict)),
        )

    def _report(self, counts: dict[str, int]) -> None:
        """Liveness is best effort: ingest must go on while only this Redis is away."""
        try:
            with self.state.pipeline(transaction=False) as pipe:
                pipe.set(KEYS.ingest_last_poll, repr(time.time()))
                for counter, amount in counts.items():
                    pipe.incrby(KEYS.ingest_count(counter), amount)
                pipe.execute()
        except redis.RedisError as error:
            self.state_redis.down(f"{type(error).__name__}: {error}")
        else:
            self.state_redis.up()


def run_ingest(settings: Settings, *, start_at: str) -> int:
    """The ingest process: consume until SIGTERM or Ctrl-C."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    group_id = f"snews-tasks-ingest-{settings.mode}"

    def open_source(on_error: ErrorCallback) -> KafkaSource:
        return KafkaSource(settings, group_id=group_id, start_at=start_at, on_error=on_error)

    ingest = Ingest(settings, open_source, CeleryBroker())
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: ingest.stop())
    log.info(
        "ingest: %s/%s as group %s -> Celery broker",
        settings.kafka_url,
        settings.observation_topic,
        group_id,
    )
    ingest.run()
    log.info("ingest stopped")
    return 0


class CeleryBroker:
    """The Celery app's broker, configured with this process's settings."""

    def __init__(self) -> None:
        self.send = CelerySender()

    def queue_is_empty(self, task: str) -> bool:
        return queue_is_empty(task)
