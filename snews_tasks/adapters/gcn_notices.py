"""GCN notices out: through gcn-kafka's producer to GCN when credentials are set, else to a
topic of the observation broker (the local stack, the tests, a dev deployment).

A notice is plain JSON, as GCN's JSON notices are (``core.gcn`` builds it). Publishing
is at least once, like the alerts: a retry after a lost delivery report may send a
revision twice, and consumers tell revisions apart by (``id``, ``record_number``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal, Protocol, cast

import confluent_kafka
import gcn_kafka
from adc.errors import KafkaException

from ..settings import Settings, gcn_credentials
from .kafka_alerts import DELIVERY_REPORT_GRACE_S, AlertPublisher

GcnDomain = Literal["gcn.nasa.gov", "test.gcn.nasa.gov", "dev.gcn.nasa.gov"]


class NoticeSink(Protocol):
    """Sends one JSON document to a topic and waits for the broker; raises if it fails."""

    def send(self, content: Mapping[str, Any], *, topic: str, key: str) -> None: ...


class GcnProducer:
    """gcn-kafka's producer (OpenID Connect client credentials, SASL/SSL to kafka.<domain>).

    `config` is passed on to it: the tests point it at a local broker in plain text."""

    def __init__(
        self,
        *,
        client_id: str | None,
        client_secret: str | None,
        domain: str,
        produce_timeout_s: float,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self._wait_s = produce_timeout_s + DELIVERY_REPORT_GRACE_S
        self._producer = gcn_kafka.Producer(
            {"message.timeout.ms": round(produce_timeout_s * 1000), **(config or {})},
            client_id=client_id,
            client_secret=client_secret,
            domain=cast("GcnDomain", domain),  # settings accepts only GCN's domains
        )

    def send(self, content: Mapping[str, Any], *, topic: str, key: str) -> None:
        reports: list[confluent_kafka.KafkaError | None] = []

        def on_delivery(
            error: confluent_kafka.KafkaError | None, message: confluent_kafka.Message
        ) -> None:
            reports.append(error if error is not None else message.error())

        self._producer.produce(
            topic, json.dumps(dict(content)).encode(), key=key, on_delivery=on_delivery
        )
        self._producer.flush(self._wait_s)
        if not reports:
            raise TimeoutError(
                f"GCN gave no delivery report for {key} on topic {topic} within {self._wait_s:g} s"
            )
        if reports[0] is not None:
            raise KafkaException(reports[0])

    def close(self) -> None:
        self._producer.flush(self._wait_s)


def open_notice_sink(settings: Settings, alert_publisher: AlertPublisher) -> NoticeSink:
    """GCN with credentials; else the alert publisher's writer, which has the notice topic."""
    credentials = gcn_credentials(settings)
    if credentials is None:
        return alert_publisher
    client_id, client_secret = credentials
    return GcnProducer(
        client_id=client_id,
        client_secret=client_secret,
        domain=settings.gcn_domain,
        produce_timeout_s=settings.kafka_produce_timeout_s,
    )
