"""Every Redis key the system uses, named once.

State Redis (P = prefix, "snews"; N = namespace, live or test):
  P:version             bumped by every state commit (the optimistic lock)
  P:seq                 arrival counter (retract_latest_n, creation order)
  P:processed           zset uuid -> keep-until (s): duplicates change nothing
  P:N:obs               hash uuid -> observation JSON
  P:N:coinc             hash id -> coincidence JSON
  P:outbox              hash key -> delivery JSON, until every delivery task has finished
  P:outbox:sent         zset key -> when its deliveries were handed to the queues (s)
  P:outbox:wait:KEY     set of the delivery tasks of KEY that have not finished yet
  P:outbox:retry        hash "KEY|task" -> until when (s) that task waits for its retry
  P:receipt:ID          a task sent with receipt ID has started (expires after a day)
  P:detectors           hash detector -> last heartbeat JSON
  P:ingest:last_poll    unix time of the ingest's latest poll, empty or not
  P:ingest:received / :enqueued / :rejected   the ingest's counters
  P:canary:sent         JSON {"time", "uuids"} of the latest canary
  P:canary:pending      hash "uuid,uuid" -> send time of canaries not seen back yet
  P:canary:last_ok      unix time of the latest check that found a canary's alert
  P:slack:posted:KEY    a posted alert revision (KEY = alert_id:revision): [channel id, ts],
                        for a week
  P:slack:picture:KEY   its sky-map picture was uploaded into the post's thread, for a week
  P:failed              hash "kind:key" -> failure record, while MongoDB cannot hold it
  P:writer:lease        the token of the coincidence worker that may commit (expires)
  P:writers             hash token -> {"role", "seen"}: the coincidence workers, for status
  P:heartbeats          stream of accepted heartbeats (the last 24 h), read by the feedback check
  P:feedback:state      JSON: the feedback rule's state and its position in P:heartbeats
  P:feedback:lock       held by the one feedback check running (redis-py lock)
  P:feedback:pending    hash event_id -> event document not yet handed to its deliveries
  P:mail:sent:ID        a mail sent (ID = its mail_id), for a week
  P:slack:operations:ID an operations notice posted (ID = the event's id), for a week
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix; tests give each run its own."""

    prefix: str = "snews"

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # -- coincidence state
    @property
    def version(self) -> str:
        return self._key("version")

    @property
    def seq(self) -> str:
        return self._key("seq")

    @property
    def processed(self) -> str:
        return self._key("processed")

    def observations(self, namespace: str) -> str:
        return self._key(namespace, "obs")

    def coincidences(self, namespace: str) -> str:
        return self._key(namespace, "coinc")

    # -- outbox
    @property
    def outbox(self) -> str:
        return self._key("outbox")

    @property
    def outbox_sent(self) -> str:
        return self._key("outbox", "sent")

    def outbox_wait(self, entry: str) -> str:
        return self._key("outbox", "wait", entry)

    @property
    def outbox_retry(self) -> str:
        return self._key("outbox", "retry")

    # -- delivery bookkeeping
    def receipt(self, receipt: str) -> str:
        return self._key("receipt", receipt)

    def slack_posted(self, alert_key: str) -> str:
        return self._key("slack", "posted", alert_key)

    def slack_picture(self, alert_key: str) -> str:
        return self._key("slack", "picture", alert_key)

    @property
    def failed(self) -> str:
        return self._key("failed")

    # -- the writers
    @property
    def writer_lease(self) -> str:
        return self._key("writer", "lease")

    @property
    def writers(self) -> str:
        return self._key("writers")

    # -- detectors, ingest liveness, canary
    @property
    def detectors(self) -> str:
        return self._key("detectors")

    # -- heartbeat feedback, mail
    @property
    def heartbeats(self) -> str:
        return self._key("heartbeats")

    @property
    def feedback_state(self) -> str:
        return self._key("feedback", "state")

    @property
    def feedback_lock(self) -> str:
        return self._key("feedback", "lock")

    @property
    def feedback_pending(self) -> str:
        return self._key("feedback", "pending")

    def mail_sent(self, mail_id: str) -> str:
        return self._key("mail", "sent", mail_id)

    def operations_posted(self, event_id: str) -> str:
        return self._key("slack", "operations", event_id)

    @property
    def ingest_last_poll(self) -> str:
        return self._key("ingest", "last_poll")

    def ingest_count(self, counter: str) -> str:
        """Counters: received, enqueued, rejected."""
        return self._key("ingest", counter)

    @property
    def canary_sent(self) -> str:
        return self._key("canary", "sent")

    @property
    def canary_pending(self) -> str:
        return self._key("canary", "pending")

    @property
    def canary_last_ok(self) -> str:
        return self._key("canary", "last_ok")


KEYS = Keys()
