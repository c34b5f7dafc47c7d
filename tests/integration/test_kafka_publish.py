"""AlertPublisher with hop-client against a real Kafka-protocol broker."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import confluent_kafka
import pytest
from hop.io import StartPosition, Stream

from snews_tasks.testing.builders import utc
from snews_tasks.entrypoints import localstack
from snews_tasks.adapters.gcn_notices import GcnProducer
from snews_tasks.adapters.retry_policies import gcn_policy, kafka_policy
from snews_tasks.settings import Settings, load_settings
from snews_tasks.adapters.kafka_alerts import AlertPublisher, open_publisher
from snews_tasks.tasks.writer import PublishFromWriter

pytestmark = pytest.mark.integration

# Far above the produce timeout below (2 s) plus the delivery-report grace; only a hang trips it.
HANG_LIMIT_S = 60.0


def settings_for(kafka_url: str) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    return load_settings("test", environ={
        "SNEWS_KAFKA_URL": kafka_url, "SNEWS_KAFKA_PRODUCE_TIMEOUT_S": "2",
        "SNEWS_ALERT_TOPIC": f"alerts-{suffix}", "SNEWS_TEST_ALERT_TOPIC": f"test-alerts-{suffix}"})


def bootstrap(service: localstack.Service) -> str:
    return f"{localstack.HOST}:{service.port}"


def alert(alert_id: str, revision: int = 1, **overrides) -> dict:
    return {"alert_id": alert_id, "revision": revision, "alert_type": "NEW",
            "detector_names": ["IceCube", "KM3NeT"],
            "neutrino_times_utc": [utc(0.000000001), utc(1)],
            "p_values": [0.01, None], "false_alarm_rate_per_year": 0.25, "is_test": False,
            "is_firedrill": False, "server_tag": "test", **overrides}


def read_topic(service: localstack.Service, topic: str) -> list[dict]:
    stream = Stream(auth=False, start_at=StartPosition.EARLIEST, until_eos=True)
    with stream.open(f"{service.url}/{topic}", "r") as reader:
        return [message.content for message in reader]


@pytest.fixture
def topics_and_publisher(kafka_service: localstack.Service
                         ) -> Iterator[tuple[Settings, AlertPublisher]]:
    settings = settings_for(kafka_service.url)
    localstack.create_topics(bootstrap(kafka_service),
                             [settings.alert_topic, settings.test_alert_topic])
    publisher = open_publisher(settings)
    try:
        yield settings, publisher
    finally:
        publisher.close()


def publish_with_hang_limit(publisher: AlertPublisher, message: dict) -> BaseException | None:
    """Publish in a thread; fail the test if it has not returned or raised within HANG_LIMIT_S."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            publisher.publish(message)
            outcome.append(None)
        except BaseException as error:  # handed to the test thread
            outcome.append(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(HANG_LIMIT_S)
    assert outcome, f"publish still blocked after {HANG_LIMIT_S} s"
    return outcome[0]


def test_alerts_arrive_as_json_in_order(kafka_service, topics_and_publisher, caplog) -> None:
    """...and each acknowledgement is logged, so an operator sees when an alert went out."""
    settings, publisher = topics_and_publisher
    sent = [alert("c-1"), alert("c-1", 2, alert_type="UPDATE", p_values=[0.01, 0.2])]
    with caplog.at_level(logging.INFO, logger="snews_tasks.adapters.kafka_alerts"):
        for message in sent:
            publisher.publish(message)
    assert read_topic(kafka_service, settings.alert_topic) == sent
    assert read_topic(kafka_service, settings.test_alert_topic) == []
    assert [r.getMessage() for r in caplog.records if "acknowledged" in r.getMessage()] == [
        f"alert c-1 revision 1 (NEW) acknowledged on {settings.alert_topic}",
        f"alert c-1 revision 2 (UPDATE) acknowledged on {settings.alert_topic}"]


def test_test_alerts_go_only_to_the_test_topic(kafka_service, topics_and_publisher) -> None:
    settings, publisher = topics_and_publisher
    publisher.publish(alert("c-7", is_test=True))
    assert read_topic(kafka_service, settings.test_alert_topic) == [alert("c-7", is_test=True)]
    assert read_topic(kafka_service, settings.alert_topic) == []


@pytest.mark.parametrize("broken, field", [
    ({"is_test": None}, "is_test"),
    ({"alert_id": ""}, "alert_id"),
])
def test_malformed_alert_is_refused_naming_the_field(topics_and_publisher, broken, field) -> None:
    _, publisher = topics_and_publisher
    with pytest.raises(ValueError, match=field) as caught:
        publisher.publish({**alert("c-1"), **broken})
    assert not kafka_policy(load_settings("test", environ={})).is_retryable(caught.value)


def test_url_with_topics_is_refused() -> None:
    with pytest.raises(ValueError, match="kafka_url"):
        AlertPublisher("kafka://127.0.0.1:9092/alerts", alert_topic="a", test_alert_topic="b",
                       auth=False, produce_timeout_s=1)


def test_dead_broker_raises_a_retryable_error_and_publishing_resumes(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    service = localstack.start_kafka(engine="noida", data_dir=data_dir)
    publisher: AlertPublisher | None = None
    try:
        settings = settings_for(service.url)
        localstack.create_topics(bootstrap(service),
                                 [settings.alert_topic, settings.test_alert_topic])
        publisher = open_publisher(settings)
        publisher.publish(alert("c-1"))

        service.stop()
        error = publish_with_hang_limit(publisher, alert("c-1", 2))
        assert error is not None, "publish reported success with the broker down"
        policy = kafka_policy(settings)
        assert policy.is_retryable(error), repr(error)

        service = localstack.start_kafka(service.port, engine="noida", data_dir=data_dir)
        for attempt in range(policy.max_retries):  # what the Celery task does
            error = publish_with_hang_limit(publisher, alert("c-1", 2))
            if error is None:
                break
            assert policy.is_retryable(error), repr(error)
            time.sleep(policy.delay(attempt))
        assert error is None, f"publishing did not resume after the restart: {error!r}"
        assert read_topic(service, settings.alert_topic) == [alert("c-1"), alert("c-1", 2)]
    finally:
        if publisher is not None:
            publisher.close()
        service.stop()


def test_the_writer_publishes_at_once_and_leaves_a_dead_broker_to_the_task(
        tmp_path: Path) -> None:
    """The coincidence writer's own publish: both alerts acknowledged; with the broker down,
    reported as not published (the Kafka task then gets them), and the writer stops trying
    for a while instead of waiting on every batch."""
    service = localstack.start_kafka(engine="noida", data_dir=tmp_path / "kafka")
    settings = settings_for(service.url)
    publisher = open_publisher(settings)
    opened: list[AlertPublisher] = []

    def the_publisher() -> AlertPublisher:
        opened.append(publisher)
        return publisher

    try:
        localstack.create_topics(bootstrap(service),
                                 [settings.alert_topic, settings.test_alert_topic])
        publish_now = PublishFromWriter(the_publisher, wait_s=2.0, pause_s=3600)
        first = [alert("c-1"), alert("c-2", is_test=True)]
        assert publish_now(first) == [True, True]
        assert read_topic(service, settings.alert_topic) == first[:1]
        assert read_topic(service, settings.test_alert_topic) == first[1:]

        service.stop()
        assert publish_now([alert("c-1", 2)]) == [False]
        assert len(opened) == 2
        assert publish_now([alert("c-1", 3)]) == [False]
        assert len(opened) == 2, "the writer tried again while paused"
    finally:
        publisher.close()
        service.stop()


def test_gcn_kafkas_producer_delivers_a_notice_and_a_dead_broker_is_retryable(
        kafka_service: localstack.Service) -> None:
    """The GCN path's own producer (gcn-kafka), pointed at a local broker in plain text as the
    tests can: what GCN would receive, and a broker that never answers named retryable."""
    topic = f"gcn-notices-{uuid.uuid4().hex[:8]}"
    localstack.create_topics(bootstrap(kafka_service), [topic])
    plain = {"bootstrap.servers": bootstrap(kafka_service), "security.protocol": "plaintext"}
    producer = GcnProducer(client_id=None, client_secret=None, domain="test.gcn.nasa.gov",
                           produce_timeout_s=5, config=plain)
    notice = {"id": "C1", "record_number": 2, "mission": "SNEWS"}
    producer.send(notice, topic=topic, key="C1:2")
    producer.close()
    consumer = confluent_kafka.Consumer({**plain, "group.id": uuid.uuid4().hex})
    consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    try:
        message = None
        deadline = time.monotonic() + 20
        while message is None and time.monotonic() < deadline:
            message = consumer.poll(0.5)
        assert message is not None and message.error() is None
        assert json.loads(message.value()) == notice  # plain JSON, as GCN's JSON notices
        assert message.key() == b"C1:2"
    finally:
        consumer.close()

    dead = {**plain, "bootstrap.servers": f"{localstack.HOST}:{localstack.free_port()}"}
    unreachable = GcnProducer(client_id=None, client_secret=None, domain="gcn.nasa.gov",
                              produce_timeout_s=1, config=dead)
    with pytest.raises(Exception) as failed:
        unreachable.send(notice, topic=topic, key="C1:2")
    policy = gcn_policy(settings_for(kafka_service.url))
    assert policy.next_delay(failed.value, 0) is not None, repr(failed.value)
