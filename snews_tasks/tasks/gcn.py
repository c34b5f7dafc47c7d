"""GCN notices: each live and fire-drill alert revision as a SNEWS2 coincidence notice
(`core.gcn`), to GCN through gcn-kafka when credentials are set, else to the notice topic
of the observation broker; with GCN's own retry policy."""

from __future__ import annotations

from ..adapters.gcn_notices import NoticeSink, open_notice_sink
from ..adapters.retry_policies import gcn_policy
from ..core.documents import alert_key
from ..core.gcn import alert_notice, wants_notice
from ..core.routing import FailureKind, TaskName
from .app import app
from .base import Delivered, DeliveryTask
from .context import resource, settings
from .kafka import alert_publisher


def notice_sink() -> NoticeSink:
    return resource("notice-sink", lambda: open_notice_sink(settings(), alert_publisher()))


@app.task(base=DeliveryTask, name=TaskName.PUBLISH_NOTICE, bind=True)
def publish_notice(self: DeliveryTask, alert: dict) -> Delivered:
    """Publish the alert revision's notice (at least once: GCN consumers tell revisions apart
    by id and record_number). A malformed alert fails permanently, with its failure record."""
    current = settings()
    if not current.gcn_notices or not wants_notice(alert):
        return Delivered.DISABLED
    sink = notice_sink()
    key = alert_key(alert)
    self.deliver(
        kind=FailureKind.ALERT_GCN,
        records={key: alert},
        policy=gcn_policy(current),
        attempt=lambda: sink.send(
            alert_notice(alert, detectors=current.detectors),
            topic=current.gcn_notice_topic,
            key=key,
        ),
    )
    return Delivered.DELIVERED
