"""E-mail: feedback mails sent over SMTP (smtplib), and the detectors' contacts file.

One connection per mail: feedback mail is rare (a few per gap, one summary a day per
detector), and a connection kept open between them would only go stale. The host, port,
TLS mode and login come from the settings; the password from the environment
(`SNEWS_SMTP_PASSWORD`), never logged. Which errors are retried: `retry_policies.mail_policy`.
"""

from __future__ import annotations

import base64
import json
import smtplib
import ssl
from collections.abc import Collection, Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from ..core.errors import MessageError
from ..core.feedback_notices import parse_contacts
from ..settings import DEFAULT_CONFIG_DIR, SMTP_TLS_MODES, Settings

#: An SMTP exchange that takes longer has failed; the retry policy takes it from there.
SMTP_TIMEOUT_S = 20.0
CHECKOUT = DEFAULT_CONFIG_DIR.parent


def build_message(mail: Mapping[str, Any], sender: str) -> EmailMessage:
    """A MIME message from a mail dict (`core.feedback_notices`); its Message-ID names the
    mail, so a receiver can tell a repeat."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(mail["to"])
    message["Subject"] = mail["subject"]
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(idstring=mail["mail_id"].replace(":", "."))
    message["X-SNEWS-Mail-Id"] = mail["mail_id"]
    message.set_content(mail["text"])
    for attachment in mail.get("attachments", ()):
        maintype, _, subtype = attachment["content_type"].partition("/")
        message.add_attachment(
            base64.b64decode(attachment["data_base64"]),
            maintype=maintype,
            subtype=subtype,
            filename=attachment["filename"],
        )
    return message


class Mailer:
    """Sends one mail per SMTP session; `tls` is none, starttls or tls."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sender: str,
        tls: str = "none",
        login: tuple[str, str] | None = None,
        timeout_s: float = SMTP_TIMEOUT_S,
    ) -> None:
        if tls not in SMTP_TLS_MODES:
            raise ValueError(f"tls: must be one of {', '.join(SMTP_TLS_MODES)}, got {tls!r}")
        self.host, self.port, self.sender, self.tls = host, port, sender, tls
        self._login = login
        self.timeout_s = timeout_s

    def send(self, mail: Mapping[str, Any]) -> None:
        """Deliver `mail` to its recipients; raises smtplib's (or the socket's) error."""
        message = build_message(mail, self.sender)
        context = ssl.create_default_context()
        smtp: smtplib.SMTP = (
            smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=context)
            if self.tls == "tls"
            else smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        )
        with smtp:
            if self.tls == "starttls":
                smtp.starttls(context=context)
            if self._login is not None:
                smtp.login(*self._login)
            smtp.send_message(message)

    def close(self) -> None:
        """Nothing held between mails; here so every resource closes alike."""


def open_mailer(settings: Settings) -> Mailer:
    password = settings.smtp_password
    login = (
        (settings.smtp_user, password.get_secret_value())
        if settings.smtp_user is not None and password is not None
        else None
    )
    return Mailer(
        settings.smtp_host,
        settings.smtp_port,
        sender=settings.mail_from,
        tls=settings.smtp_tls,
        login=login,
    )


def contacts_path(settings: Settings) -> Path:
    path = Path(settings.contacts_file)
    return path if path.is_absolute() else CHECKOUT / path


def load_contacts(path: Path, detectors: Collection[str]) -> dict[str, tuple[str, ...]]:
    """The contacts file; a missing file means no detector has contacts (each is reported),
    a malformed one raises `MessageError` naming the file and the entry."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        return parse_contacts(json.loads(text), detectors)
    except json.JSONDecodeError as error:
        raise MessageError(str(path), f"is not JSON: {error}") from None
    except MessageError as error:
        raise MessageError(f"{path}: {error.field}", error.problem) from None
