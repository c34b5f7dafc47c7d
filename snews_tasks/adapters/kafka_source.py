"""The observation topic read with librdkafka (hop-client's own Kafka layer), using hop's
URL, auth and message-format conventions.

Not hop's `Consumer.read`: that generator hides empty polls (the ingest's
liveness must move while no supernova happens) and fixes `fetch.wait.max.ms` at
librdkafka's 500 ms, which on Tansu and noida delays every message by that much.
Partitions are assigned, not subscribed, like hop does: no consumer-group join
(about 23 s on Tansu), and the group id only names the committed offsets, which
are committed explicitly once the tasks made from them have started.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, cast

import confluent_kafka
from adc.kafka import parse_kafka_url

from ..settings import Settings
from .hop import sasl_config

log = logging.getLogger(__name__)

MAX_BATCH = 500  # messages taken from one poll
FETCH_WAIT_MAX_MS = 10  # the broker answers a fetch within this long even with no data
OPEN_TIMEOUT_S = 5.0  # also how long SIGTERM may wait while the broker is down at start
PROBE_TIMEOUT_S = 2.0
RECONNECT_BACKOFF_MAX_S = 10.0
#: librdkafka reports these on every failed reconnect; they start (or confirm) an outage.
CONNECTION_ERRORS = frozenset(
    {
        confluent_kafka.KafkaError._ALL_BROKERS_DOWN,
        confluent_kafka.KafkaError._TRANSPORT,
        confluent_kafka.KafkaError._RESOLVE,
        confluent_kafka.KafkaError._TIMED_OUT,
    }
)
#: hop's `_format` header values that carry a message body as plain bytes (snews-pt sends
#: "blob" with a pickle, JSON publishers "json"); no header means a raw Kafka producer.
OBSERVATION_FORMATS = (None, "blob", "json")

ErrorCallback = Callable[[confluent_kafka.KafkaError], None]


def hop_format(message: confluent_kafka.Message) -> str | None:
    """The hop message format a record was written in (its `_format` header), if any."""
    headers = cast("list[tuple[str, str | bytes | None]]", message.headers() or [])
    for key, value in headers:
        if key == "_format":
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return None


class Source(Protocol):
    """The observation topic as the loop needs it; `KafkaSource` is the real one."""

    def poll(self, timeout_s: float) -> list[confluent_kafka.Message]: ...

    def commit(self, offsets: dict[tuple[str, int], int]) -> None: ...

    def probe(self) -> None: ...

    def close(self) -> None: ...


SourceFactory = Callable[[ErrorCallback], Source]


class SourceUnavailable(RuntimeError):
    """The broker or the topic cannot be reached; the loop retries with backoff."""


def _log_failed_commit(
    error: confluent_kafka.KafkaError | None, partitions: list[confluent_kafka.TopicPartition]
) -> None:
    """A lost commit only means a re-delivery after a restart; the next commit covers it."""
    if error is not None:
        offsets = ", ".join(f"partition {p.partition} offset {p.offset}" for p in partitions)
        log.warning("offset commit failed (%s): %s", offsets, error.str())


class KafkaSource:
    """One partition-assigned librdkafka consumer of the observation topic."""

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str,
        start_at: str,
        on_error: ErrorCallback,
        max_batch: int = MAX_BATCH,
    ) -> None:
        if start_at not in ("earliest", "latest"):
            raise ValueError(f"start_at: must be 'earliest' or 'latest', got {start_at!r}")
        username, brokers, _ = parse_kafka_url(settings.kafka_url)
        if len(brokers) != 1:
            raise ValueError(f"kafka_url: must name one broker, got {settings.kafka_url!r}")
        self.topic = settings.observation_topic
        self.max_batch = max_batch
        config = {
            "bootstrap.servers": brokers[0],
            "group.id": group_id,
            "enable.auto.commit": False,  # `commit`, once the tasks have started
            "on_commit": _log_failed_commit,
            "auto.offset.reset": start_at,  # only if a committed offset is out of range
            "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": round(RECONNECT_BACKOFF_MAX_S * 1000),
            "error_cb": on_error,
            "log_level": 2,  # librdkafka logs every failed reconnect; error_cb covers them
        }
        config.update(sasl_config(settings.hop_auth, brokers[0], username))
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
                low, high = self._consumer.get_watermark_offsets(partition, timeout=OPEN_TIMEOUT_S)
                partition.offset = low if start_at == "earliest" else high
            if fresh:
                # Committed at once: offsets are otherwise committed only once tasks have
                # started, and a crash before the first such commit would restart at "latest",
                # past everything published meanwhile.
                self._consumer.commit(offsets=fresh, asynchronous=False)
        except confluent_kafka.KafkaException as error:
            raise SourceUnavailable(error.args[0].str()) from None
        self._consumer.assign(committed)
        log.info(
            "reading %s from %s",
            self.topic,
            ", ".join(f"partition {p.partition} offset {p.offset}" for p in committed),
        )

    def poll(self, timeout_s: float) -> list[confluent_kafka.Message]:
        """Waits for one message, then takes what has already arrived behind it."""
        first = self._consumer.poll(timeout_s)
        if first is None:
            return []
        return [first, *self._consumer.consume(num_messages=self.max_batch - 1, timeout=0)]

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """`offsets` maps (topic, partition) to the last offset handled."""
        self._consumer.commit(
            offsets=[confluent_kafka.TopicPartition(t, p, o + 1) for (t, p), o in offsets.items()],
            asynchronous=True,
        )

    def probe(self) -> None:
        """Raises SourceUnavailable unless the broker answers for the topic now."""
        self._partitions(PROBE_TIMEOUT_S)

    def close(self) -> None:
        """Waits for commits in flight (milliseconds: each was sent while the broker was up)."""
        self._consumer.close()
