"""Outgoing e-mail through the organisation's SMTP relay (aiosmtplib). Configured by CORRAL_SMTP_*; with no
host, nothing is sent and callers are told so (the compliance ladder records it on the step)."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib

from corral.config import Settings


class MailNotConfigured(Exception):
    """No SMTP host is set (CORRAL_SMTP_HOST)."""


@dataclass(frozen=True)
class Mail:
    to: tuple[str, ...]
    subject: str
    body: str


def build(settings: Settings, mail: Mail) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = ", ".join(mail.to)
    message["Subject"] = mail.subject.replace("\r", " ").replace("\n", " ")
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="corral")
    message.set_content(mail.body)
    return message


async def send(settings: Settings, mail: Mail) -> str:
    """Send one message to all its recipients; returns the server's answer. Raises MailNotConfigured or
    aiosmtplib's errors (connection, refusal)."""
    if not settings.smtp_host:
        raise MailNotConfigured("no SMTP server is configured (CORRAL_SMTP_HOST)")
    if not mail.to:
        raise ValueError("a message needs at least one recipient")
    _refused, answer = await aiosmtplib.send(
        build(settings, mail),
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username or None,
        password=settings.smtp_password or None,
        use_tls=settings.smtp_security == "tls",
        start_tls=settings.smtp_security == "starttls",
        timeout=settings.smtp_timeout_seconds,
    )
    return answer
