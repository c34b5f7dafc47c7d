"""The mail queue: feedback mails to detectors' contacts over SMTP, each sent once.

An SMTP server that is down delays mail, never loses it: the attempt is retried by
`retry_policies.mail_policy`, and when retries run out the mail is recorded with its whole
content (kind ``mail``) for `snews-tasks failed retry`. A sent mail is remembered for a week
by its id, so a redelivered or re-driven task sends nothing twice.
"""

from __future__ import annotations

from ..adapters.mail import Mailer, open_mailer
from ..adapters.redis_keys import KEYS
from ..adapters.retry_policies import mail_policy
from ..core.documents import require_str
from ..core.routing import FailureKind, TaskName
from .app import app
from .base import Delivered, DeliveryTask
from .context import resource, settings, state_redis

SENT_TTL_S = 7 * 86400


def mailer() -> Mailer:
    return resource("mailer", lambda: open_mailer(settings()))


@app.task(base=DeliveryTask, name=TaskName.SEND_MAIL, bind=True)
def send_mail(self: DeliveryTask, mail: dict) -> Delivered:
    """Send one feedback mail (`core.feedback_notices`) to its recipients."""
    mail_id = require_str(mail, "mail_id", "mail")
    sent = KEYS.mail_sent(mail_id)
    redis_client = state_redis()
    if redis_client.exists(sent):
        return Delivered.ALREADY_DONE
    self.deliver(
        kind=FailureKind.MAIL,
        records={mail_id: mail},
        policy=mail_policy(settings()),
        attempt=lambda: mailer().send(mail),
    )
    redis_client.set(sent, 1, ex=SENT_TTL_S)
    return Delivered.DELIVERED
