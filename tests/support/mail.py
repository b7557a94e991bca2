"""A real SMTP server for the tests (aiosmtpd)."""
from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import socket
import ssl
import threading
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[dict] = []
        self.lock = threading.Lock()
        self.fail_next = 0

    async def handle_DATA(self, server, session, envelope):
        if self.fail_next:
            self.fail_next -= 1
            return "451 Requested action aborted: try again later"
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(message)
            self.envelopes.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                                   "tls": session.ssl is not None,
                                   "login": getattr(session, "auth_data", None)})
        return "250 OK"


class SmtpSink:
    """aiosmtpd on 127.0.0.1; `tls` makes it offer STARTTLS (self-signed cert in `cafile`), and
    `credentials` makes it require AUTH with them."""

    def __init__(self, tmp: Path | None = None, tls: bool = False,
                 credentials: tuple[str, str] | None = None) -> None:
        self.inbox = _Inbox()
        self.port = free_port()
        self.cafile: Path | None = None
        kwargs: dict = {}
        if tls:
            assert tmp is not None
            self.cafile, context = _self_signed(tmp)
            kwargs["tls_context"] = context
        if credentials:
            user, password = credentials

            def authenticate(server, session, envelope, mechanism, auth_data):
                ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user \
                    and auth_data.password.decode() == password
                return AuthResult(success=ok)
            kwargs.update(authenticator=authenticate, auth_required=True, auth_require_tls=True)
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port,
                                     server_hostname="localhost", **kwargs)

    def __enter__(self) -> "SmtpSink":
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()

    @property
    def messages(self) -> list[EmailMessage]:
        with self.inbox.lock:
            return list(self.inbox.messages)

    @property
    def envelopes(self) -> list[dict]:
        with self.inbox.lock:
            return list(self.inbox.envelopes)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's certificate (and checks it, host name included)."""
        return ssl.create_default_context(cafile=str(self.cafile))


def _self_signed(tmp: Path) -> tuple[Path, ssl.SSLContext]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "smtp-cert.pem", tmp / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert_path), str(key_path))
    return cert_path, context
