"""The collaboration's own protocols, end to end: `snews-tasks --mode dev up` on one machine
with the dev topics snews-pt 3.0.0 ships, read and written by snews-pt's own functions.

The local broker has no accounts, so snews-pt's hop streams are opened without auth (and
the subscriber reads from the start to the end of the topic instead of waiting forever);
everything else is snews-pt's code as shipped. The tests share one stack, in file order.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import confluent_kafka
import pymongo
import pytest
import snews_pt.remote_commands
import snews_pt.snews_sub
from hop.io import StartPosition, Stream
from snews.models.messages import DetectorMessageBase, Tier
from snews_pt.messages import Publisher
from test_whole_stack import MONGO_DB, WholeStack, running_stack

from snews_tasks.core.snews_cs_format import snews_cs_fields
from snews_tasks.core.times import format_time_ns
from snews_tasks.settings import load_settings
from snews_tasks.testing.gcn_schema import schema_errors

pytestmark = pytest.mark.e2e

DEV = load_settings("dev", {"SNEWS_FLOWER_BASIC_AUTH": "dev:dev-only-password"})
TOPICS = {"observation": DEV.observation_topic, "alert": DEV.alert_topic,
          "test_alert": DEV.test_alert_topic}
S = 1_000_000_000
FLOOD = 200
SNEWS_CS_KEYS = ("id", "alert_type", "server_tag", "False Alarm Prob", "detector_names",
                 "sent_time", "p_values", "neutrino_times", "p_values average",
                 "sub list number")


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeStack]:
    credentials = {"SNEWS_FLOWER_BASIC_AUTH": "dev:dev-only-password",
                   "SNEWS_CONSOLE_BASIC_AUTH": "dev:dev-only-console"}
    with running_stack(tmp_path_factory.mktemp("dev-stack"), mode="dev", topics=TOPICS,
                       extra_env=credentials) as stack:
        yield stack


@pytest.fixture
def stack(dev_stack: WholeStack) -> Iterator[WholeStack]:
    try:
        yield dev_stack
    finally:
        print(dev_stack.tail())


@pytest.fixture
def snews_pt_without_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    """snews-pt's streams on the local broker, which has no accounts."""
    def stream(**options: Any) -> Stream:
        return Stream(**{**options, "auth": False})
    monkeypatch.setattr(snews_pt.remote_commands, "Stream", stream)


def archive(stack: WholeStack) -> Any:
    return pymongo.MongoClient(stack.mongo_url)[MONGO_DB]


def test_dev_mode_uses_snews_pts_dev_topics() -> None:
    shipped = Path(snews_pt.__file__).parent / "auxiliary" / "dev-config.env"
    names = {line.split("=", 1)[0]: line.split("=", 1)[1].strip('"').rsplit("/", 1)[-1]
             for line in shipped.read_text().splitlines() if "=" in line}
    assert (DEV.observation_topic, DEV.alert_topic, DEV.connection_test_topic) == (
        names["OBSERVATION_TOPIC"], names["ALERT_TOPIC"], names["CONNECTION_TEST_TOPIC"])


def test_snews_pt_test_connection_is_answered(
        stack: WholeStack, snews_pt_without_auth: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OBSERVATION_TOPIC", f"{stack.kafka_url}/{DEV.observation_topic}")
    monkeypatch.setenv("CONNECTION_TEST_TOPIC", f"{stack.kafka_url}/{DEV.connection_test_topic}")

    connected = snews_pt.remote_commands.test_connection(
        detector_name="Super-K", firedrill=False, start_at="EARLIEST", patience=5)

    shown = capsys.readouterr().out
    assert connected, shown
    [answer] = [line for line in shown.splitlines() if "have a connection" in line]
    assert answer.startswith("You (Super-K) have a connection to the server at ")
    print(f"FIGURES snews_pt test-connection: {answer}")
    db = archive(stack)
    stack.wait_until(lambda: db.observations.count_documents({"tier": "ConnectionTest"}) == 1,
                     "the connection test archived")
    assert db.detector_status.count_documents({"detector_name": "Super-K"}) == 0
    assert db.alerts.count_documents({"is_canary": False}) == 0


def test_a_flood_of_connection_tests_gets_a_bounded_number_of_echoes(
        stack: WholeStack) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": stack.kafka_address})
    for _ in range(FLOOD):  # as snews-pt writes them: a JSON string holding the JSON object
        message = DetectorMessageBase(
            id="0_test-connection", detector_name="JUNO", tier=Tier.HEART_BEAT,
            sent_time_utc=datetime.now(UTC).isoformat(), meta={"status": "sending"})
        producer.produce(DEV.observation_topic, json.dumps(message.model_dump_json()).encode())
    assert producer.flush(30) == 0
    db = archive(stack)
    juno = {"tier": "ConnectionTest", "detector_name": "JUNO"}
    stack.wait_until(lambda: db.observations.count_documents(juno) == FLOOD,
                     f"{FLOOD} connection tests archived")
    stack.wait_until(stack.drained, "every queue drained")

    echoes = [m for m in stack.read_topic(DEV.connection_test_topic)
              if m["detector_name"] == "JUNO"]
    limit = DEV.connection_test_echoes_per_minute
    assert len(echoes) == limit  # the flood took far less than a minute
    assert all(e["meta"] == {"status": "received"} for e in echoes)
    assert db.observations.count_documents({**juno, "echoed": True}) == limit
    assert db.detector_status.count_documents({"detector_name": "JUNO"}) == 0
    print(f"FIGURES connection-test flood: {FLOOD} from JUNO -> {len(echoes)} echoes "
          f"(limit {limit} per detector per minute)")


def test_alerts_reach_snews_pt_subscriber_and_hop_consumers_and_gcn_as_notices(
        stack: WholeStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now_ns = time.time_ns()
    publisher = Publisher(f"{stack.kafka_url}/{DEV.observation_topic}", auth=False)
    for detector, offset_s in (("IceCube", -11), ("KamLAND", -2), ("Super-K", 0)):
        publisher.add_message({"detector_name": detector, "p_val": 0.01, "is_test": False,
                               "neutrino_time_utc": format_time_ns(now_ns + offset_s * S)})
    publisher.send()
    db = archive(stack)
    stack.wait_until(lambda: db.alerts.count_documents({"is_test": False}) >= 4,
                     "four alert revisions")
    stack.wait_until(stack.drained, "every queue drained")
    live = {(a["alert_id"], a["revision"]) for a in db.alerts.find({"is_test": False})}

    # A plain hop consumer reading the keys snews_cs 3.0.1's consumers read.
    on_topic = stack.read_topic(DEV.alert_topic)
    assert Counter((a["alert_id"], a["revision"]) for a in on_topic) == Counter(live)
    for alert in on_topic:
        assert all(key in alert for key in SNEWS_CS_KEYS)
        own = db.alerts.find_one({"alert_id": alert["alert_id"], "revision": alert["revision"]},
                                 {"_id": False, "archived_utc": False})
        assert {k: alert[k] for k in SNEWS_CS_KEYS} == snews_cs_fields(own)

    # snews-pt's Subscriber, saving each alert it reads.
    def subscriber_stream(**options: Any) -> Stream:
        return Stream(**{**options, "auth": False, "until_eos": True,
                         "start_at": StartPosition.EARLIEST})
    monkeypatch.setattr(snews_pt.snews_sub, "Stream", subscriber_stream)
    env_file = tmp_path / "subscriber.env"
    env_file.write_text(f"ALERT_TOPIC={stack.kafka_url}/{DEV.alert_topic}\n"
                        f"CONNECTION_TEST_TOPIC={stack.kafka_url}/{DEV.connection_test_topic}\n"
                        "ALERT_OUTPUT=alerts/\n")
    subscriber = snews_pt.snews_sub.Subscriber(str(env_file), firedrill_mode=False)
    files = list(subscriber.subscribe_and_redirect_alert(
        outputfolder=str(tmp_path / "saved"), auth=False, _display=False))
    saved = [json.loads(Path(file).read_text()) for file in files]
    assert Counter((a["alert_id"], a["revision"]) for a in saved) == Counter(live)
    assert {a["alert_type"] for a in saved} >= {"COINC_MSG", "UPDATE"}

    # GCN notices on the local notice topic: one per live revision, valid against the schema.
    notices = stack.read_topic(DEV.gcn_notice_topic)
    assert Counter((n["id"], n["record_number"]) for n in notices) == Counter(live)
    assert all(schema_errors(n) == [] for n in notices)
    for notice in notices:
        status = notice["detector_status"]
        assert {d for d, s in status.items() if s == "triggered"} <= {"IceCube", "KamLAND",
                                                                       "Super-K"}
        assert set(status) == set(DEV.detectors)
    print("FIGURES gcn notice: " + json.dumps(notices[0], indent=2))
