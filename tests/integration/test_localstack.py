"""The local servers work with the real clients, and stop when told to."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pymongo
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from hop import Stream
from hop.io import StartPosition
from hop.models import JSONBlob
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from snews_tasks.testing.slack_api import FakeSlackApi, channel_id
from snews_tasks.entrypoints import localstack

pytestmark = pytest.mark.integration

POLL_DEADLINE_S = 30.0


def assert_gone(service: localstack.Service) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(service.pid, 0)
    assert not service.log_path.parent.exists()


def produce(address: str, topic: str, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": address})
    producer.produce(topic, value)
    assert producer.flush(10) == 0


def consume_one(address: str, topic: str) -> bytes:
    consumer = Consumer({"bootstrap.servers": address, "group.id": f"test-{uuid.uuid4()}"})
    # assign, not subscribe: a group join on Tansu takes about 20 s (hop assigns too)
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    try:
        received: list[bytes] = []

        def got_message() -> bool:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                received.append(message.value())
            return bool(received)

        localstack.wait_until(got_message, POLL_DEADLINE_S, f"a message on {topic}")
        return received[0]
    finally:
        consumer.close()


def test_redis_keeps_data_across_restart_with_appendonly(tmp_path: Path) -> None:
    service = localstack.start_redis(data_dir=tmp_path, appendonly=True)
    try:
        with redis.Redis.from_url(service.url) as client:
            client.set("cache", "kept")
            assert client.get("cache") == b"kept"
    finally:
        service.stop()
    assert_gone(service)

    restarted = localstack.start_redis(service.port, data_dir=tmp_path, appendonly=True)
    try:
        with redis.Redis.from_url(restarted.url) as client:
            assert client.get("cache") == b"kept"
    finally:
        restarted.stop()


def test_tansu_produce_consume_on_a_created_topic() -> None:
    service = localstack.start_kafka(topics=["snews.observations"])
    try:
        produce(service.address, "snews.observations", b'{"detector_name": "JUNO"}')
        assert consume_one(service.address, "snews.observations") == b'{"detector_name": "JUNO"}'
    finally:
        service.stop()
    assert_gone(service)


def test_created_topics_have_one_partition_and_max_message_bytes(
        kafka_service: localstack.Service) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    localstack.create_topics(kafka_service.address, ["ordered.topic"])
    localstack.create_topics(kafka_service.address, ["ordered.topic"])  # existing: no error
    admin = AdminClient({"bootstrap.servers": kafka_service.address})
    assert len(admin.list_topics("ordered.topic", timeout=10).topics["ordered.topic"]
               .partitions) == 1
    resource = ConfigResource(ConfigResource.Type.TOPIC, "ordered.topic")
    config = admin.describe_configs([resource])[resource].result()
    assert config["max.message.bytes"].value == "1048588"


def test_hop_stream_writes_and_reads_json_on_tansu(kafka_service: localstack.Service) -> None:
    topic = f"hop.{uuid.uuid4().hex}"
    localstack.create_topics(kafka_service.address, [topic])
    url = f"{kafka_service.url}/{topic}"
    with Stream(auth=False).open(url, "w") as writer:
        writer.write(JSONBlob({"detector_name": "IceCube", "p_val": 0.01}))
    reader = Stream(auth=False, start_at=StartPosition.EARLIEST, until_eos=True)
    with reader.open(url, "r", group_id=f"test-{uuid.uuid4()}") as stream:
        contents = [message.content for message in stream]
    assert contents == [{"detector_name": "IceCube", "p_val": 0.01}]


def test_noida_keeps_topics_and_messages_across_restart(tmp_path: Path) -> None:
    service = localstack.start_kafka(topics=["outage"], engine="noida", data_dir=tmp_path)
    try:
        produce(service.address, "outage", b"before the outage")
    finally:
        service.stop()
    assert_gone(service)

    restarted = localstack.start_kafka(service.port, engine="noida", data_dir=tmp_path)
    try:
        assert consume_one(restarted.address, "outage") == b"before the outage"
    finally:
        restarted.stop()


def test_mongo_insert_find_and_stop() -> None:
    service = localstack.start_mongo()
    try:
        with pymongo.MongoClient(service.url) as client:
            client.snews.observations.insert_one({"uuid": "u1", "detector_name": "KamLAND"})
            found = client.snews.observations.find_one({"uuid": "u1"}, {"_id": False})
        assert found == {"uuid": "u1", "detector_name": "KamLAND"}
    finally:
        service.stop()
    assert_gone(service)


def test_a_port_in_use_is_refused(redis_service: localstack.Service) -> None:
    with pytest.raises(RuntimeError,
                       match=rf"redis: port {redis_service.port} on 127.0.0.1 is already in use"):
        localstack.start_redis(redis_service.port)


def test_a_server_that_exits_fails_the_wait_with_its_output(tmp_path: Path) -> None:
    log_path = tmp_path / "redis.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(["redis-server", "--port", "0", "--no-such-option", "yes"],
                                   stdout=log, stderr=subprocess.STDOUT)
    with pytest.raises(RuntimeError, match=r"(?s)exited with status \d+.*Bad directive"):
        localstack.wait_until(lambda: False, 30, "broken redis", process=process,
                              log_path=log_path)


def test_unknown_kafka_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="engine must be 'tansu' or 'noida'"):
        localstack.start_kafka(engine="kafka")


def test_redis_databases_are_flushed_when_handed_out_again(
        redis_url: str, new_redis_url: Callable[[], str]) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.set("leftover", "1")
        for _ in range(100):
            if new_redis_url() == redis_url:
                break
        else:
            pytest.fail(f"{redis_url} was never handed out again")
        assert client.dbsize() == 0


def test_slack_client_posts_and_sees_rate_limit(slack_api: FakeSlackApi) -> None:
    client = WebClient(token="xoxb-test", base_url=slack_api.base_url)
    assert client.auth_test()["bot_id"] == "B0"

    slack_api.script([(429, {"Retry-After": "1"}), (500, {}), ("ok_false", "channel_not_found")])
    with pytest.raises(SlackApiError) as rate_limited:
        client.chat_postMessage(channel="#snews-alerts", text="first try")
    assert rate_limited.value.response.status_code == 429
    assert rate_limited.value.response.headers["Retry-After"] == "1"
    with pytest.raises(SlackApiError) as server_error:
        client.chat_postMessage(channel="#snews-alerts", text="second try")
    assert server_error.value.response.status_code == 500
    with pytest.raises(SlackApiError) as not_ok:
        client.chat_postMessage(channel="#snews-alerts", text="third try")
    assert not_ok.value.response["error"] == "channel_not_found"

    response = client.chat_postMessage(channel="#snews-alerts", text="SNEWS alert",
                                       blocks=[{"type": "section",
                                                "text": {"type": "mrkdwn", "text": "*NEW*"}}])
    assert response["ok"] and response["channel"] == channel_id("#snews-alerts")  # Slack's id
    assert [post["text"] for post in slack_api.posts] == ["SNEWS alert"]
    assert [call.status for call in slack_api.calls] == [200, 429, 500, 200, 200]


def test_slack_down_answers_503_until_up(slack_api: FakeSlackApi) -> None:
    client = WebClient(token="xoxb-test", base_url=slack_api.base_url)
    slack_api.down()
    with pytest.raises(SlackApiError) as unavailable:
        client.chat_postMessage(channel="#snews-alerts", text="during outage")
    assert unavailable.value.response.status_code == 503
    slack_api.up()
    client.chat_postMessage(channel="#snews-alerts", text="after outage")
    assert [post["text"] for post in slack_api.posts] == ["after outage"]


def test_slack_rejects_requests_without_token(slack_api: FakeSlackApi) -> None:
    with pytest.raises(SlackApiError) as not_authed:
        WebClient(base_url=slack_api.base_url).chat_postMessage(channel="#c", text="x")
    assert not_authed.value.response["error"] == "not_authed"
    assert slack_api.posts == []
