"""`snews-tasks ingest`: the observation topic into the Celery queues.

Each message is decoded and validated here, so a bad one is rejected at the door
and never occupies the serial coincidence worker. What one poll returns (one
message when traffic is light) gives one storage task for each heartbeat,
significance or timing observation and each reject (with its raw payload);
its CoincidenceTier messages and retractions go, in order, into one
coincidence task, sent at once when the writer's queue is empty. While the
writer is busy they are held and gathered with the next polls' (up to
`MAX_BATCH`), so under load each task carries as much as the writer could
not take meanwhile.

Delivery: every task carries a receipt id, set in the state Redis when a
worker starts it (`tasks/receipts.py`). A poll's offsets are committed only
once every task made from it, and from the polls before it, has started; a
task not started `RESEND_AFTER_S` after its send while its queue is empty
was lost between the Celery broker and a worker (a Redis crash in the moment
kombu moves it) and is sent again. A crash of the ingest re-delivers what was
not committed; tasks are idempotent by uuid. A send that fails is retried
until it succeeds or the process stops, never skipped and never committed.
Offsets are not auto-committed: librdkafka's close then waits forever for a
broker that is down, and SIGTERM must work during an outage.

Reading uses librdkafka (hop-client's own Kafka layer) with hop's URL, auth and
message-format conventions instead of hop's `Consumer.read`, because that
generator hides empty polls (the liveness key must move while no supernova
happens) and fixes `fetch.wait.max.ms` at librdkafka's 500 ms, which on Tansu
and noida delays every message by that much. Partitions are assigned, not
subscribed, like hop does: no consumer-group join (about 23 s on Tansu), and
the group id only names the committed offsets.

Liveness for `snews-tasks status`, in the state Redis: `snews:ingest:last_poll`
(unix time of the latest poll, empty or not) and the counters
`snews:ingest:received`, `:enqueued` (valid messages handed to a queue) and
`:rejected` (invalid messages, archived as rejects).
"""

from __future__ import annotations

import argparse
import base64
import logging
import signal
import threading
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from datetime import UTC, datetime
from typing import Protocol

import confluent_kafka
import redis
from adc.kafka import parse_kafka_url
from hop.auth import load_auth, select_matching_auth
from kombu.exceptions import OperationalError

from .messages import Message, MessageError, Tier, format_time_ns
from .processing import Processor
from .settings import Settings
from .store import RECEIPT_HEADER, RESEND_AFTER_S, RedisStore

log = logging.getLogger(__name__)

LAST_POLL_KEY = "snews:ingest:last_poll"
RECEIVED_KEY = "snews:ingest:received"
ENQUEUED_KEY = "snews:ingest:enqueued"
REJECTED_KEY = "snews:ingest:rejected"

COINCIDENCE_TASK = "snews.coincidence.process"
REJECT_TASK = "snews.storage.store_reject"
TASK_FOR_TIER = {
    Tier.COINCIDENCE: COINCIDENCE_TASK,
    Tier.RETRACTION: COINCIDENCE_TASK,
    Tier.HEARTBEAT: "snews.storage.store_heartbeat",
    Tier.SIGNIFICANCE: "snews.storage.store_observation",
    Tier.TIMING: "snews.storage.store_observation",
}
#: hop's `_format` header values that carry a message body as plain bytes (snews-pt sends
#: "blob" with a pickle, JSON publishers "json"); no header means a raw Kafka producer.
OBSERVATION_FORMATS = (None, "blob", "json")

POLL_TIMEOUT_S = 0.5  # bounds how stale last_poll gets and how long a SIGTERM waits
CONFIRM_POLL_TIMEOUT_S = 0.02  # the poll's wait while tasks await their receipts
MAX_BATCH = 500  # messages taken from one poll: one coincidence task under load
RECEIPT_CHECK_S = 0.02
RECEIPT_CHECK_MAX = 200  # receipts read per check, the oldest first (they hold the commit)
MAX_UNCONFIRMED = 100_000  # tasks sent and not started: past this, reading pauses
FETCH_WAIT_MAX_MS = 10  # the broker answers a fetch within this long even with no data
OPEN_TIMEOUT_S = 5.0  # also how long SIGTERM may wait while the broker is down at start
PROBE_TIMEOUT_S = 2.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
#: librdkafka reports these on every failed reconnect; they start (or confirm) an outage.
CONNECTION_ERRORS = frozenset({
    confluent_kafka.KafkaError._ALL_BROKERS_DOWN, confluent_kafka.KafkaError._TRANSPORT,
    confluent_kafka.KafkaError._RESOLVE, confluent_kafka.KafkaError._TIMED_OUT,
})
#: The Celery broker being down: kombu wraps the connection errors, redis-py may leak through.
ENQUEUE_ERRORS = (OperationalError, redis.RedisError, OSError)

ErrorCallback = Callable[[confluent_kafka.KafkaError], None]


class Source(Protocol):
    """The observation topic as the loop needs it; `KafkaSource` is the real one."""

    def poll(self, timeout_s: float) -> list[confluent_kafka.Message]: ...

    def commit(self, offsets: dict[tuple[str, int], int]) -> None: ...

    def probe(self) -> None: ...

    def close(self) -> None: ...


SourceFactory = Callable[[ErrorCallback], Source]


class SourceUnavailable(RuntimeError):
    """The broker or the topic cannot be reached; the loop retries with backoff."""


def _log_failed_commit(error: confluent_kafka.KafkaError | None,
                       partitions: list[confluent_kafka.TopicPartition]) -> None:
    """A lost commit only means a re-delivery after a restart; the next commit covers it."""
    if error is not None:
        offsets = ", ".join(f"partition {p.partition} offset {p.offset}" for p in partitions)
        log.warning("offset commit failed (%s): %s", offsets, error.str())


def _sasl_config(hop_auth_setting: str, broker: str, username: str | None) -> dict:
    """librdkafka settings for the hop credential matching `broker`, as hop's reader picks it."""
    from .tasks.kafka import hop_auth  # imports the Celery app: not at CLI start

    auth = hop_auth(hop_auth_setting)
    if auth is False:
        return {}
    credentials = load_auth() if auth is True else auth
    return select_matching_auth(credentials, broker, username)()


class KafkaSource:
    """One partition-assigned librdkafka consumer of the observation topic."""

    def __init__(self, settings: Settings, *, group_id: str, start_at: str,
                 on_error: ErrorCallback) -> None:
        if start_at not in ("earliest", "latest"):
            raise ValueError(f"start_at: must be 'earliest' or 'latest', got {start_at!r}")
        username, brokers, _ = parse_kafka_url(settings.kafka_url)
        if len(brokers) != 1:
            raise ValueError(f"kafka_url: must name one broker, got {settings.kafka_url!r}")
        self.topic = settings.observation_topic
        config = {
            "bootstrap.servers": brokers[0],
            "group.id": group_id,
            "enable.auto.commit": False,  # `commit`, once the tasks have started
            "on_commit": _log_failed_commit,
            "auto.offset.reset": start_at,  # only if a committed offset is out of range
            "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": round(BACKOFF_MAX_S * 1000),
            "error_cb": on_error,
            "log_level": 2,  # librdkafka logs every failed reconnect; error_cb covers them
        }
        config.update(_sasl_config(settings.hop_auth, brokers[0], username))
        self._consumer = confluent_kafka.Consumer(config)
        try:
            self._assign(start_at)
        except BaseException:
            self._consumer.close()
            raise

    def _partitions(self, timeout_s: float) -> list[confluent_kafka.TopicPartition]:
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=timeout_s)
        except confluent_kafka.KafkaException as error:
            raise SourceUnavailable(error.args[0].str()) from None
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise SourceUnavailable(f"topic {self.topic} does not exist")
        return [confluent_kafka.TopicPartition(self.topic, p) for p in sorted(topic.partitions)]

    def _assign(self, start_at: str) -> None:
        """Start at the group's committed offsets; a new group starts at `start_at`.

        The offsets are resolved now rather than at the first fetch, so whatever is published
        once the source is open is read, even with start_at "latest".
        """
        partitions = self._partitions(OPEN_TIMEOUT_S)
        try:
            committed = self._consumer.committed(partitions, timeout=OPEN_TIMEOUT_S)
            fresh = [p for p in committed if p.offset < 0]
            for partition in fresh:
                low, high = self._consumer.get_watermark_offsets(
                    partition, timeout=OPEN_TIMEOUT_S)
                partition.offset = low if start_at == "earliest" else high
            if fresh:
                # Committed at once: offsets are otherwise committed only once tasks have
                # started, and a crash before the first such commit would restart at "latest",
                # past everything published meanwhile.
                self._consumer.commit(offsets=fresh, asynchronous=False)
        except confluent_kafka.KafkaException as error:
            raise SourceUnavailable(error.args[0].str()) from None
        self._consumer.assign(committed)
        log.info("reading %s from %s", self.topic,
                 ", ".join(f"partition {p.partition} offset {p.offset}" for p in committed))

    def poll(self, timeout_s: float) -> list[confluent_kafka.Message]:
        """Waits for one message, then takes what has already arrived behind it."""
        first = self._consumer.poll(timeout_s)
        if first is None:
            return []
        return [first, *self._consumer.consume(num_messages=MAX_BATCH - 1, timeout=0)]

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """`offsets` maps (topic, partition) to the last offset handled."""
        self._consumer.commit(offsets=[confluent_kafka.TopicPartition(t, p, o + 1)
                                       for (t, p), o in offsets.items()], asynchronous=True)

    def probe(self) -> None:
        """Raises SourceUnavailable unless the broker answers for the topic now."""
        self._partitions(PROBE_TIMEOUT_S)

    def close(self) -> None:
        """Waits for commits in flight (milliseconds: each was sent while the broker was up)."""
        self._consumer.close()


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

    def up(self) -> None:
        if self.since is not None:
            log.warning("%s reachable again after %.0f s", self.what, time.time() - self.since)
            self.since = None


class Backoff:
    """Doubling delays, reset on success."""

    def __init__(self, first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.next_s = first_s

    def delay(self) -> float:
        current = self.next_s
        self.next_s = min(self.next_s * 2, self.max_s)
        return current

    def reset(self) -> None:
        self.next_s = self.first_s


def raw_text(value: bytes | None) -> str:
    """A payload as the reject archive stores it: the text if UTF-8, else base64 with a prefix."""
    value = value or b""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode("ascii")


def reject_for(value: bytes | None, error: MessageError, received_ns: int) -> dict:
    """The archive's reject document, shaped exactly as the coincidence worker's."""
    from .tasks.coincidence import reject_document  # imports the Celery app: not at CLI start

    return reject_document(raw_text(value), error, received_ns)


def _hop_format(message: confluent_kafka.Message) -> str | None:
    for key, value in message.headers() or ():
        if key == "_format":
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return None


def task_for(message: Message, received_ns: int) -> tuple[str, dict]:
    """The task and its document for a valid message; storage documents get the receive time."""
    task = TASK_FOR_TIER[message.tier]
    document = message.to_dict()
    if task != COINCIDENCE_TASK:
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

    def __init__(self, settings: Settings, consumer_factory: SourceFactory,
                 broker: Broker) -> None:
        self.processor = Processor(settings)
        self.consumer_factory = consumer_factory
        self.celery = broker
        self.state = redis.Redis.from_url(settings.state_redis_url, socket_timeout=2,
                                          socket_connect_timeout=2)
        self.receipts = RedisStore(self.state)
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
        self._read_error: str | None = None  # the last one logged, until a message is read

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        """Open the source (retrying while the broker is down) and consume until stopped."""
        backoff = Backoff()
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
        probe_backoff = Backoff()
        next_probe = 0.0
        while not self._stopping.is_set():
            waiting = self._unconfirmed_tasks
            if waiting >= MAX_UNCONFIRMED:  # the workers are gone: leave the rest in Kafka
                self._stopping.wait(POLL_TIMEOUT_S)
                batch = []
            else:
                batch = source.poll(CONFIRM_POLL_TIMEOUT_S if waiting or self._held
                                    else POLL_TIMEOUT_S)
            counts: dict[str, int] = {}
            readable = [m for m in batch if m.error() is None]
            for message in batch:
                if message.error() is not None:
                    self._on_read_error(message.error())
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

    def _parse(self, message: confluent_kafka.Message) -> Message:
        hop_format = _hop_format(message)
        if hop_format not in OBSERVATION_FORMATS:
            raise MessageError("format", f"hop message format {hop_format!r} does not carry "
                                         "an observation message (expected blob or json)")
        return self.processor.parse(message.value() or b"")

    def _handle(self, messages: list[confluent_kafka.Message]) -> dict[str, int]:
        received_ns = time.time_ns()
        tasks: list[tuple[str, object]] = []
        coincidence: list[dict] = []
        counts = {RECEIVED_KEY: len(messages), ENQUEUED_KEY: 0, REJECTED_KEY: 0}
        for message in messages:
            try:
                parsed = self._parse(message)
            except MessageError as error:
                log.warning("rejected message at %s offset %d: %s", message.topic(),
                            message.offset(), error)
                tasks.append((REJECT_TASK, reject_for(message.value(), error, received_ns)))
                counts[REJECTED_KEY] += 1
                continue
            task, document = task_for(parsed, received_ns)
            counts[ENQUEUED_KEY] += 1
            log.info("%s from %s (uuid %s) -> %s", parsed.tier.value, parsed.detector_name,
                     parsed.uuid, task)
            if task == COINCIDENCE_TASK:
                coincidence.append(document)
            else:
                tasks.append((task, document))
        sent = [Sent(uuidlib.uuid4().hex, task, argument) for task, argument in tasks]
        for one in sent:
            if not self._enqueue(one):
                return {}  # stopping: not committed, so it is read again after the restart
        self._gathering.offsets.update({(m.topic(), m.partition()): m.offset() for m in messages})
        self._gathering.tasks += sent
        self._held += coincidence
        self._release()
        return counts

    def _release(self) -> None:
        """Send the held coincidence messages as one task once the writer has taken the one
        before (its queue is empty) or the batch is full; until then keep gathering, so under
        load the batches grow to what the writer can take, and a light load waits for nothing."""
        if self._held and (len(self._held) >= MAX_BATCH or self._writer_waiting()):
            task = Sent(uuidlib.uuid4().hex, COINCIDENCE_TASK, self._held)
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
            return self.celery.queue_is_empty(COINCIDENCE_TASK)
        except ENQUEUE_ERRORS:
            return True  # the send then retries until the broker is back

    def _enqueue(self, task: Sent) -> bool:
        """Send until the broker takes it; False only if asked to stop meanwhile."""
        backoff = Backoff()
        while True:
            try:
                self.celery.send(task.task, task.argument, {RECEIPT_HEADER: task.receipt})
            except ENQUEUE_ERRORS as error:
                self.celery_broker.down(f"{type(error).__name__}: {error}")
                if self._stopping.wait(backoff.delay()):
                    return False
            else:
                self.celery_broker.up()
                task.sent_at = time.monotonic()
                return True

    def _confirm(self, source: Source) -> None:
        """Read the receipts of the oldest tasks; commit the polls whose tasks have all started
        and send again those lost on the way."""
        now = time.monotonic()
        if not self.unconfirmed or now < self._next_receipt_check:
            return
        self._next_receipt_check = now + RECEIPT_CHECK_S
        waiting = list(islice((t for p in self.unconfirmed for t in p.tasks if not t.started),
                              RECEIPT_CHECK_MAX))
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
        for task in waiting:
            if not task.started and now - task.sent_at >= RESEND_AFTER_S:
                self._resend(task)

    def _resend(self, task: Sent) -> None:
        try:
            if not self.celery.queue_is_empty(task.task):
                task.sent_at = time.monotonic()  # still in line: look again later
                return
        except ENQUEUE_ERRORS as error:
            self.celery_broker.down(f"{type(error).__name__}: {error}")
            return
        documents = task.argument if isinstance(task.argument, list) else [task.argument]
        log.warning("%s (receipt %s) not started %.0f s after it was sent, with its queue "
                    "empty: sending it again (uuids: %s)", task.task, task.receipt,
                    RESEND_AFTER_S, " ".join(str(d.get("uuid")) for d in documents))
        self._enqueue(task)

    def _report(self, counts: dict[str, int]) -> None:
        """Liveness is best effort: ingest must go on while only this Redis is away."""
        try:
            with self.state.pipeline(transaction=False) as pipe:
                pipe.set(LAST_POLL_KEY, repr(time.time()))
                for key, amount in counts.items():
                    pipe.incrby(key, amount)
                pipe.execute()
        except redis.RedisError as error:
            self.state_redis.down(f"{type(error).__name__}: {error}")
        else:
            self.state_redis.up()


# --- the command ---------------------------------------------------------------------------------

def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="read the observation topic and enqueue its messages as Celery tasks",
        description=(
            "Consume the observation topic (SNEWS_KAFKA_URL/SNEWS_OBSERVATION_TOPIC) as consumer "
            "group snews-tasks-ingest-<mode>. CoincidenceTier and Retraction messages go to the "
            "coincidence queue, batched while the writer is busy (up to 500 per task); the "
            "other tiers and rejects go to the storage queue, one task each. Offsets are "
            "committed only once a worker has started the tasks made from them; a task not "
            "started 10 s after its send, with its queue empty, is sent again. "
            "Runs until SIGTERM or Ctrl-C."
        ),
    )
    parser.add_argument("--start-at", choices=("latest", "earliest"), default="latest",
                        help="where a consumer group without committed offsets starts "
                             "(default: latest, so a first start does not replay the "
                             "topic's retention)")
    parser.set_defaults(handler=run)


class CeleryBroker:
    """`send_task` on the Celery app, which must be configured like this process."""

    def __init__(self, settings: Settings) -> None:
        from . import celery_app

        if celery_app.settings != settings:
            raise SystemExit(f"snews-tasks: the Celery app reads mode {celery_app.settings.mode!r} "
                             f"from SNEWS_MODE, this command runs in mode {settings.mode!r}; "
                             "set SNEWS_MODE instead of --mode")
        self.app = celery_app.app

    def send(self, task: str, argument: object, headers: dict) -> None:
        # No result backend round trip: after one failed backend reconnect Celery refuses to
        # send for good ("the Celery application must be restarted").
        self.app.send_task(task, args=[argument], headers=headers, ignore_result=True)

    def queue_is_empty(self, task: str) -> bool:
        from .tasks.receipts import queue_is_empty

        return queue_is_empty(task)


def run(args: argparse.Namespace, settings: Settings) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    broker = CeleryBroker(settings)
    group_id = f"snews-tasks-ingest-{settings.mode}"

    def open_source(on_error: ErrorCallback) -> KafkaSource:
        return KafkaSource(settings, group_id=group_id, start_at=args.start_at, on_error=on_error)

    ingest = Ingest(settings, open_source, broker)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: ingest.stop())
    log.info("ingest: %s/%s as group %s -> Celery broker", settings.kafka_url,
             settings.observation_topic, group_id)
    ingest.run()
    log.info("ingest stopped")
    return 0
