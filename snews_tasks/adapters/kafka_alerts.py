"""Alerts on Kafka: the publisher of the alert topics, and a reader of them.

Alerts are JSON (`hop.models.JSONBlob`): `snews_pt subscribe` reads
`message.content` as a dict. Publishing is at least once: a retry after a lost
delivery report may publish a revision twice, and consumers deduplicate on
(alert_id, revision). Retryable errors (the broker down or slow) are named by
`retry_policies.kafka_policy`; a message the broker refuses and a malformed
alert are permanent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import confluent_kafka
from adc.errors import KafkaException
from hop.auth import Auth
from hop.io import StartPosition, Stream
from hop.models import JSONBlob

from ..core.documents import require_str
from ..core.snews_cs_format import topic_document
from ..settings import Settings
from .hop import hop_auth, topic_url

logger = logging.getLogger(__name__)

# Extra wait for the delivery report beyond the message timeout, for librdkafka's timeout scan.
DELIVERY_REPORT_GRACE_S = 2.0


#: The same client error is logged once in this many seconds: librdkafka repeats it for every
#: failed reconnect, dozens of times a second while the broker is down.
CLIENT_ERROR_QUIET_S = 10.0
_client_errors_logged: dict[str, float] = {}


def _log_client_error(error: confluent_kafka.KafkaError) -> None:
    """A failed publish raises, so these are warnings."""
    text, now = error.str(), time.monotonic()
    if now - _client_errors_logged.get(text, -CLIENT_ERROR_QUIET_S) >= CLIENT_ERROR_QUIET_S:
        _client_errors_logged[text] = now
        logger.warning("Kafka client: %s", text)


class AlertPublisher:
    """One hop-client writer, opened once, serving the live and the test alert topic and the
    `extra_topics` (the connection-test echoes, GCN notices on the local broker).

    hop's writer sends to any topic named on write, sharing one librdkafka
    producer, so one writer serves every topic. What the alert topics carry is the
    `alert_format` (`core.snews_cs_format.topic_document`). Every message must reach the
    broker within `produce_timeout_s` (librdkafka's ``message.timeout.ms``);
    `publish` waits for the delivery report, so a dead broker raises after
    that long instead of hanging. hop's per-topic size check (a
    describe-configs round trip that blocks about 60 s on a dead broker) is
    switched off: alerts are a few kB, far below any topic's limit.
    """

    def __init__(
        self,
        kafka_url: str,
        *,
        alert_topic: str,
        test_alert_topic: str,
        auth: bool | list[Auth],
        produce_timeout_s: float,
        alert_format: str = "snews_tasks",
        extra_topics: Sequence[str] = (),
    ) -> None:
        parsed = urlparse(kafka_url)
        if parsed.scheme != "kafka" or not parsed.hostname or parsed.path.strip("/"):
            raise ValueError(
                f"kafka_url: must be kafka://host:port without topics, got {kafka_url!r}"
            )
        for name, topic in (("alert_topic", alert_topic), ("test_alert_topic", test_alert_topic)):
            if not topic or "," in topic:
                raise ValueError(f"{name}: must be one topic name, got {topic!r}")
        if produce_timeout_s <= 0:
            raise ValueError(f"produce_timeout_s: must be > 0, got {produce_timeout_s}")
        self.alert_topic = alert_topic
        self.test_alert_topic = test_alert_topic
        self.alert_format = alert_format
        self._delivery_wait = timedelta(seconds=produce_timeout_s + DELIVERY_REPORT_GRACE_S)
        self._writer = Stream(auth=auth).open(
            topic_url(kafka_url, *dict.fromkeys((alert_topic, test_alert_topic, *extra_topics))),
            "w",
            produce_timeout=timedelta(seconds=produce_timeout_s),
            automatic_offload=False,
            error_callback=_log_client_error,
        )

    def topic_for(self, alert: Mapping[str, Any]) -> str:
        """Test alerts go to their own topic, so they never reach the real subscribers."""
        is_test = alert.get("is_test")
        if not isinstance(is_test, bool):
            raise ValueError(f"alert: field 'is_test' must be true or false, got {is_test!r}")
        return self.test_alert_topic if is_test else self.alert_topic

    def publish(self, alert: Mapping[str, Any]) -> None:
        """Send one alert and wait until the broker has it; raise if it does not."""
        [error] = self.publish_many([alert], wait_s=self._delivery_wait.total_seconds())
        if error is not None:
            raise error

    def send(self, content: Mapping[str, Any], *, topic: str, key: str) -> None:
        """Send any JSON document to `topic` (one of those opened) and wait for the broker."""
        [error] = self._write_all([(content, topic, key)], self._delivery_wait.total_seconds())
        if error is not None:
            raise error

    def publish_many(
        self, alerts: Sequence[Mapping[str, Any]], *, wait_s: float
    ) -> list[Exception | None]:
        """Send alerts together and wait up to `wait_s` for the broker to have them all; for
        each, None once the broker has it, else why not (an alert not acknowledged in time may
        still arrive later: publishing is at least once)."""
        sends = [
            (
                topic_document(alert, self.alert_format),
                self.topic_for(alert),
                require_str(alert, "alert_id", "alert"),
            )
            for alert in alerts
        ]
        results = self._write_all(sends, wait_s)
        for alert, (_content, topic, _key), result in zip(alerts, sends, results, strict=True):
            if result is None:
                logger.info(
                    "alert %s revision %s (%s) acknowledged on %s",
                    alert.get("alert_id"),
                    alert.get("revision"),
                    alert.get("alert_type"),
                    topic,
                )
        return results

    def _write_all(
        self, sends: Sequence[tuple[Mapping[str, Any], str, str]], wait_s: float
    ) -> list[Exception | None]:
        """Write (content, topic, key) messages and wait up to `wait_s` for their reports."""
        reports: dict[int, confluent_kafka.KafkaError | None] = {}
        for i, (content, topic, key) in enumerate(sends):

            def on_delivery(
                error: confluent_kafka.KafkaError | None,
                message: confluent_kafka.Message,
                i: int = i,
            ) -> None:
                reports[i] = error if error is not None else message.error()

            self._writer.write(
                JSONBlob(content=dict(content)),
                delivery_callback=on_delivery,
                topic=topic,
                key=key,
            )
        self._writer.flush(timedelta(seconds=wait_s))
        results: list[Exception | None] = []
        for i, (_, topic, key) in enumerate(sends):
            if i not in reports:
                results.append(
                    TimeoutError(
                        f"Kafka gave no delivery report for {key} on topic {topic} "
                        f"within {wait_s:g} s"
                    )
                )
            elif reports[i] is not None:
                results.append(KafkaException(reports[i]))
            else:
                results.append(None)
        return results

    def close(self) -> None:
        """Flush what is queued (bounded by the produce timeout) and disconnect."""
        unsent = self._writer.close()
        if unsent:
            logger.error("closing the Kafka writer with %d alert(s) unsent", unsent)


def open_publisher(settings: Settings) -> AlertPublisher:
    """The worker's alert publisher; connects lazily, so it opens even while the broker is down."""
    return AlertPublisher(
        settings.kafka_url,
        alert_topic=settings.alert_topic,
        test_alert_topic=settings.test_alert_topic,
        auth=hop_auth(settings.hop_auth),
        produce_timeout_s=settings.kafka_produce_timeout_s,
        alert_format=settings.alert_format,
        extra_topics=(settings.connection_test_topic, settings.gcn_notice_topic),
    )


def read_alerts(settings: Settings, topic: str, *, group_id: str) -> Iterator[dict[str, Any]]:
    """`topic` from this group's committed offset to its current end: JSON alerts only."""
    stream = Stream(
        auth=hop_auth(settings.hop_auth), start_at=StartPosition.EARLIEST, until_eos=True
    )
    with stream.open(
        topic_url(settings.kafka_url, topic),
        "r",
        group_id=group_id,
        ignoretest=False,
        fetch_external=False,
    ) as reader:
        for message in reader.read():
            if isinstance(message, JSONBlob) and isinstance(message.content, dict):
                yield message.content
