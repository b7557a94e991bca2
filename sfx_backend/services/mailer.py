"""Sending email: real SMTP (STARTTLS when the server offers it), or the log when SMTP is not configured."""
from __future__ import annotations

import ipaddress
import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Protocol

log = logging.getLogger(__name__)


class MailError(Exception):
    """The message could not be handed over. `transient` says whether trying again may help."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class Mailer(Protocol):
    def send(self, message: EmailMessage, kind: str | None = None) -> str:
        """Hand the message over; returns "sent" or "logged". Raises MailError. `kind` names the
        notification, for logs."""
        ...


def build_message(sender: str, to: str, subject: str, text: str, html: str) -> EmailMessage:
    """A multipart/alternative message: plain text first, HTML as the preferred alternative."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    domain = sender.rsplit("@", 1)[-1].strip(" >") or None
    message["Message-ID"] = make_msgid(domain=domain)
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SmtpMailer:
    """smtplib over a fresh connection per message (tasks send a few messages, not bulk mail).

    Port 465 means implicit TLS; any other port upgrades with STARTTLS whenever the server offers it.
    Credentials are never sent over an unencrypted connection to a remote host.
    """

    def __init__(self, host: str, port: int = 587, username: str | None = None, password: str | None = None,
                 timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.timeout = timeout
        self.ssl_context = ssl_context or ssl.create_default_context()

    def send(self, message: EmailMessage, kind: str | None = None) -> str:
        """Deliver over a fresh SMTP connection."""
        try:
            if self.port == 465:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                                      context=self.ssl_context)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with smtp:
                smtp.ehlo()
                encrypted = self.port == 465
                if not encrypted and smtp.has_extn("starttls"):
                    smtp.starttls(context=self.ssl_context)
                    smtp.ehlo()
                    encrypted = True
                if self.username:
                    if not encrypted and not _is_loopback(self.host):
                        raise MailError("the SMTP server offers no STARTTLS; refusing to send credentials "
                                        "in clear text", transient=False)
                    smtp.login(self.username, self.password or "")
                smtp.send_message(message)
        except MailError:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise MailError(f"SMTP authentication failed ({exc.smtp_code})", transient=False) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            raise MailError("the SMTP server refused the recipient", transient=False) from exc
        except smtplib.SMTPResponseException as exc:
            # 5xx is permanent, 4xx (greylisting, busy) is worth another try.
            raise MailError(f"SMTP error {exc.smtp_code}", transient=exc.smtp_code < 500) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise MailError(f"SMTP connection failed: {type(exc).__name__}") from exc
        return "sent"


class LogMailer:
    """No SMTP configured: note in the log that a message was due, and report success.

    Only its kind and recipient: a body holds personal data (names, prompts) and may hold a
    verification link, which is a credential.
    """

    def send(self, message: EmailMessage, kind: str | None = None) -> str:
        """Log the kind and recipient; the message itself goes nowhere."""
        log.info("email not sent (no SMTP_HOST configured)", extra={
            "event": "email_logged", "to": message["To"], "kind": kind})
        return "logged"
