"""The alerts queue: alerts the writer could not publish itself go to the alert topic here,
with the Kafka retry policy (test alerts to the test topic)."""

from __future__ import annotations

from ..adapters.kafka_alerts import AlertPublisher, open_publisher
from ..adapters.retry_policies import kafka_policy
from ..core.documents import alert_key, require_str
from ..core.routing import FailureKind, TaskName
from .app import app
from .base import Delivered, DeliveryTask
from .context import resource, settings


def alert_publisher() -> AlertPublisher:
    """The process's one publisher (the notify worker's, or the coincidence writer's)."""
    return resource("alert-publisher", lambda: open_publisher(settings()))


@app.task(base=DeliveryTask, name=TaskName.PUBLISH_ALERT, bind=True)
def publish_alert(self: DeliveryTask, alert: dict) -> Delivered:
    """Publish an alert to the alert topic (the test topic for is_test alerts)."""
    publisher = alert_publisher()
    self.deliver(
        kind=FailureKind.ALERT_KAFKA,
        records={alert_key(alert): alert},
        policy=kafka_policy(settings()),
        attempt=lambda: publisher.publish(alert),
    )
    return Delivered.DELIVERED


@app.task(base=DeliveryTask, name=TaskName.ECHO_CONNECTION_TEST, bind=True)
def echo_connection_test(self: DeliveryTask, echo: dict) -> Delivered:
    """Write a connection test's echo (`core.connection_test`) to the connection-test topic,
    where `snews_pt test-connection` waits for it. The ingest bounds how many it sends."""
    publisher = alert_publisher()
    detector = require_str(echo, "detector_name", "connection test")
    self.deliver(
        kind=FailureKind.CONNECTION_ECHO,
        records={f"{detector}:{echo.get('uuid')}": echo},
        policy=kafka_policy(settings()),
        attempt=lambda: publisher.send(echo, topic=settings().connection_test_topic, key=detector),
    )
    return Delivered.DELIVERED
