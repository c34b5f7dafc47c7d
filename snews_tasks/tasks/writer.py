"""The serial writer's logic, free of Celery so tests drive it directly.

A batch of messages is validated, the expired observations of their namespaces
dropped, and every message applied in order; one commit then writes the
engine's changes together with the outbox entries (archive documents, alerts,
rejects). Only after the commit are the entries handed to the notification
queues, so a crash anywhere leaves either nothing done or a committed outbox
that the next batch or the sweep delivers. The writer also publishes the
alerts it has just committed itself (`PublishFromWriter`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import cached_property
from typing import Any

import redis

from ..adapters.detector_status import DetectorStatus
from ..adapters.kafka_alerts import AlertPublisher
from ..adapters.outbox import DELIVERY_RESEND_AFTER_S, OUTBOX_HEADER, Outbox
from ..adapters.state import RedisState, StateConflict, WriteView
from ..core import routing
from ..core.engine import Outcome, namespace_of
from ..core.messages import Message, MessageError, Tier
from ..core.payloads import reject_document
from ..core.processing import Processor
from ..core.routing import BATCHED, TaskName
from ..core.times import format_time_ns

log = logging.getLogger(__name__)

#: Redis trouble is retried without limit: the message stays queued until the state is reachable.
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, StateConflict)

#: Sends one task: its name, its argument and the message headers.
Send = Callable[[str, Any, dict], None]
#: Publishes alerts to Kafka at once; for each, whether the broker has it.
PublishNow = Callable[[list[dict]], list[bool]]
#: Wraps one dispatch's sends, so a sender can hand them to the broker together.
Batch = Callable[[], AbstractContextManager[object]]


class OnlineDetectors(Collection[str]):
    """The detectors whose heartbeat counts them online, read from Redis only when an alert is
    built: most messages raise none, and the read is a round trip."""

    def __init__(self, view: WriteView, processor: Processor, now_ns: int) -> None:
        self.view = view
        self.processor = processor
        self.now_ns = now_ns

    @cached_property
    def _names(self) -> frozenset[str]:
        return frozenset(
            d
            for d, hb in self.view.heartbeats().items()
            if self.processor.is_online(hb["seen_ns"], hb["status"], self.now_ns)
        )

    def __contains__(self, detector: object) -> bool:
        return detector in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class CoincidenceService:
    """The writer's logic, free of Celery so tests can drive it directly."""

    def __init__(
        self,
        processor: Processor,
        state: RedisState,
        outbox: Outbox,
        send: Send,
        *,
        queue_is_empty: Callable[[str], bool],
        slack_enabled: bool,
        batch: Batch = contextlib.nullcontext,
        publish_now: PublishNow | None = None,
        localization_enabled: bool = True,
    ) -> None:
        self.processor = processor
        self.state = state
        self.outbox = outbox
        self.send = send
        self.queue_is_empty = queue_is_empty
        self.batch = batch
        self.publish_now = publish_now
        self.skip: set[str] = set() if slack_enabled else {TaskName.POST_SLACK}
        if not localization_enabled:
            self.skip.add(TaskName.LOCALIZE)
        # A new writer, or one whose hand-on failed, may find committed entries nobody handed
        # on: it reads the whole outbox, so they go out first and in commit order.
        self._outbox_may_hold_more = True

    @classmethod
    def on_redis(
        cls,
        client: redis.Redis,
        processor: Processor,
        send: Send,
        *,
        lease_token: str = "",
        **options: Any,
    ) -> CoincidenceService:
        """The writer on one state Redis (a client decoding responses), committing under
        `lease_token` ("" without a lease); `options` as for the constructor."""
        state = RedisState(
            client,
            heartbeats=DetectorStatus(client).latest,
            bucket_ns=processor.threshold_ns,
            lease_token=lease_token,
        )
        return cls(processor, state, Outbox(client), send, **options)

    def handle(self, payload: Any, *, now_ns: int | None = None) -> str:
        """One message; see `handle_many`."""
        return self.handle_many([payload], now_ns=now_ns)[0]

    def handle_many(self, payloads: Sequence[Any], *, now_ns: int | None = None) -> list[str]:
        """Apply messages in order in one commit; each one's outcome. A bad message is rejected
        and recorded; one that hits a bug is recorded as well, the rest of the batch is applied,
        and the error is raised after the commit so the task shows as failed."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        checked = [self._check(payload, now_ns) for payload in payloads]
        bugs: list[Exception] = []

        def step(view: WriteView) -> list[str]:
            bugs.clear()
            for namespace in sorted(
                {namespace_of(m.is_test) for m in checked if isinstance(m, Message)}
            ):
                self._expire(view, namespace, now_ns)
            outcomes = []
            for payload, message in zip(payloads, checked, strict=True):
                try:
                    if isinstance(message, MessageError):
                        raise message
                    outcomes.append(self._step(view, message, now_ns))
                except MessageError as error:
                    outcomes.append(self._reject(view, payload, error, now_ns))
                except Exception as error:  # a bug must not lose the message: it is recorded
                    bugs.append(error)
                    outcomes.append(
                        self._reject(
                            view, payload, MessageError(None, f"internal error: {error!r}"), now_ns
                        )
                    )
            return outcomes

        outcomes, committed = self.state.transact(lambda view: (step(view), view.outbox))
        self._after_commit(committed)
        if bugs:
            raise bugs[0]
        return outcomes

    def _check(self, payload: Any, now_ns: int) -> Message | MessageError:
        try:
            message = self.processor.parse(payload)
            self.processor.check_fresh(message, now_ns)
            if message.tier not in (Tier.COINCIDENCE, Tier.RETRACTION):
                raise MessageError("tier", f"{message.tier.value} messages go to the storage queue")
        except MessageError as error:
            return error
        return message

    def expire(self, now_ns: int) -> dict[str, str]:
        """Periodic expiry of both namespaces and of the duplicate memory."""

        def step(view: WriteView) -> dict[str, str]:
            result = {ns: self._expire(view, ns, now_ns) for ns in ("live", "test")}
            view.forget_processed(now_ns)
            return result

        return self.state.transact(step)

    def _expire(self, view: WriteView, namespace: str, now_ns: int) -> str:
        before_ns = now_ns - self.processor.lifetime_ns
        if not view.has_observations_before(namespace, before_ns):
            return "expired 0"
        changes = self.processor.expire(view, namespace, now_ns=now_ns, new_id=view.new_id)
        if changes.removed:
            view.stage(namespace, changes)
        return changes.describe()

    def dispatch(self, *, older_than_s: float = 0.0) -> int:
        """Hand on committed entries nobody handed on (a sweep passes an age, leaving fresh ones
        to their task); at-least-once, receivers are idempotent."""
        return self._hand_on(self.outbox.pending(older_than_s=older_than_s))

    def resend_unfinished(self, *, older_than_s: float = DELIVERY_RESEND_AFTER_S) -> int:
        """Send again the deliveries handed on long ago that have not finished, wait for no
        retry, and are not in their queue: lost on the way to a worker, or with it."""
        resent = 0
        with self.batch():
            for key, (entry, tasks) in self.outbox.unfinished(older_than_s=older_than_s).items():
                for task in tasks:
                    if self.queue_is_empty(task):
                        log.warning(
                            "%s for %s not finished %.0f s after it was sent, with its "
                            "queue empty: sending it again",
                            task,
                            key,
                            older_than_s,
                        )
                        self._send(task, [(key, entry["document"])])
                        resent += 1
        return resent

    def _after_commit(self, committed: Mapping[str, str]) -> None:
        if self._outbox_may_hold_more:
            # Also what a killed writer handed on without sending: not started, queue empty.
            self.resend_unfinished(older_than_s=0.0)
            entries = self.outbox.pending()
        else:
            entries = {k: json.loads(v) for k, v in committed.items()}
        self._outbox_may_hold_more = True  # until the hand-on below has gone through
        self._hand_on(entries)
        self._outbox_may_hold_more = False

    def _hand_on(self, entries: Mapping[str, dict]) -> int:
        if not entries:
            return 0
        deliveries = {
            key: [
                task
                for task in routing.deliveries(entry["kind"], entry["document"])
                if task not in self.skip
            ]
            for key, entry in entries.items()
        }
        alerts = [key for key in entries if TaskName.PUBLISH_ALERT in deliveries[key]]
        if alerts and self.publish_now is not None:
            published = self.publish_now([entries[key]["document"] for key in alerts])
            for key, done in zip(alerts, published, strict=True):
                if done:
                    deliveries[key].remove(TaskName.PUBLISH_ALERT)
        self.outbox.handing_on(deliveries)
        grouped: dict[str, list[tuple[str, dict]]] = {}
        try:
            with self.batch():
                for key, entry in entries.items():
                    task: str
                    for task in deliveries[key]:
                        if task in BATCHED:
                            grouped.setdefault(task, []).append((key, entry["document"]))
                        else:
                            self._send(task, [(key, entry["document"])])
                for task, items in grouped.items():
                    self._send(task, items)
        except BaseException:
            # Back to "not handed on", so the next task hands them on at once; should that fail
            # too, the sweep finds them unfinished and sends them again.
            with contextlib.suppress(*REDIS_ERRORS):
                self.outbox.not_handed_on(entries)
            raise
        return len(entries)

    def _send(self, task: str, items: list[tuple[str, dict]]) -> None:
        documents = [document for _, document in items]
        self.send(
            task,
            documents if task in BATCHED else documents[0],
            {OUTBOX_HEADER: [key for key, _ in items]},
        )

    def _step(self, view: WriteView, message: Message, now_ns: int) -> str:
        online = OnlineDetectors(view, self.processor, now_ns)
        seq = view.next_seq()
        outcome = self.processor.step(
            view, message, now_ns=now_ns, seq=seq, new_id=view.new_id, heartbeat_online=online
        )
        if outcome.changes.outcome is Outcome.DUPLICATE:
            return Outcome.DUPLICATE
        view.stage(outcome.namespace, outcome.changes, seq=seq)
        # `seq` is the writer's arrival number: the archive shows the order messages were applied.
        document = {
            **message.to_dict(),
            "received_time_utc": format_time_ns(now_ns),
            "outcome": outcome.changes.describe(),
            "seq": seq,
        }
        view.stage_outbox(
            f"observation:{message.uuid}", {"kind": "observation", "document": document}
        )
        self._stage_alerts(view, outcome.alerts)
        return outcome.changes.describe()

    @staticmethod
    def _stage_alerts(view: WriteView, alerts: list[dict]) -> None:
        for alert in alerts:
            view.stage_outbox(
                f"alert:{alert['alert_id']}:{alert['revision']}",
                {"kind": "alert", "document": alert},
            )

    def attach_localization(self, result: Mapping[str, Any], *, now_ns: int | None = None) -> str:
        """A localize task's result becomes the coincidence's next revision, an UPDATE, if its
        members are still those localized; else it is dropped (the newer revision is being
        localized). Raises ValueError naming the field of a malformed result."""
        now_ns = time.time_ns() if now_ns is None else now_ns

        def step(view: WriteView) -> str:
            online = OnlineDetectors(view, self.processor, now_ns)
            outcome = self.processor.attach_localization(
                view, result, now_ns=now_ns, heartbeat_online=online
            )
            if outcome.changes.put_coincidences:
                view.stage(outcome.namespace, outcome.changes)
                self._stage_alerts(view, outcome.alerts)
            return outcome.changes.describe()

        described, committed = self.state.transact(lambda view: (step(view), view.outbox))
        self._after_commit(committed)
        return described

    def _reject(self, view: WriteView, payload: Any, error: MessageError, now_ns: int) -> str:
        document = reject_document(payload, error, now_ns)
        log.warning("rejected message: %s", error)
        view.stage_outbox(
            f"reject:{document['reject_id']}", {"kind": "reject", "document": document}
        )
        return f"rejected: {error}"

    def close(self) -> None:
        """Worker shutdown closes every resource (`context.close_all`); this one owns a client."""
        self.state.client.close()


class PublishFromWriter:
    """The writer publishes the alerts it has just committed itself, so telescopes hear within
    milliseconds instead of after a hop through the alerts queue. What it cannot publish at
    once goes to the Kafka task, which retries by the Kafka policy; after a failure the writer
    leaves publishing to that task for a while, so a broker outage never holds up the serial
    writer for more than one short wait."""

    def __init__(
        self, publisher: Callable[[], AlertPublisher], *, wait_s: float = 1.0, pause_s: float = 30.0
    ) -> None:
        self.publisher = publisher
        self.wait_s = wait_s
        self.pause_s = pause_s
        self._paused_until = 0.0

    def __call__(self, alerts: list[dict]) -> list[bool]:
        if time.monotonic() < self._paused_until:
            return [False] * len(alerts)
        try:
            errors = self.publisher().publish_many(alerts, wait_s=self.wait_s)
        except Exception as error:  # whatever it is, the Kafka task gets the alerts
            errors = [error] * len(alerts)
        failed = [e for e in errors if e is not None]
        if failed:
            self._paused_until = time.monotonic() + self.pause_s
            log.warning(
                "publishing %d alert(s) from the writer failed (%s); the Kafka task "
                "publishes them, and the next for %.0f s",
                len(failed),
                failed[0],
                self.pause_s,
            )
        return [e is None for e in errors]
