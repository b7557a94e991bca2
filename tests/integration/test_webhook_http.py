"""One webhook POST over TLS to a pinned address: the connection goes to the checked IP while SNI, the
Host header and the certificate check use the URL's name (sfx_backend/services/webhook_http.py)."""
from __future__ import annotations

import datetime
import http.server
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sfx_backend.services.webhook_http import post
from sfx_backend.services.webhook_targets import Target

NAME = "hooks.example.test"


def _certificate(tmp_path):
    """A CA and a server certificate for NAME signed by it (files: ca.pem, server.pem, server.key)."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject, issuer, key, signing_key, ca: bool, san=None):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = build(ca_name, ca_name, ca_key, ca_key, True)
    server = build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)]), ca_name, server_key, ca_key, False,
                   san=NAME)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.key").write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return tmp_path / "ca.pem"


@pytest.fixture
def tls_receiver(tmp_path):
    ca = _certificate(tmp_path)
    seen: dict = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen["host"] = self.headers["Host"]
            seen["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    def remember_sni(sock, server_name, ctx):
        seen["sni"] = server_name  # returning None goes on with the handshake

    context.sni_callback = remember_sni
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], str(ca), seen
    server.shutdown()
    server.server_close()


def test_tls_goes_to_the_pinned_address_and_checks_the_certificate_for_the_name(tls_receiver):
    port, ca, seen = tls_receiver
    target = Target(scheme="https", host=NAME, port=port, path="/hook", address="127.0.0.1")
    result = post(target, b'{"x":1}', {"Content-Type": "application/json"}, ca_certs=ca)
    assert (result.http_status, result.error) == (204, None)
    assert seen == {"sni": NAME, "host": f"{NAME}:{port}", "body": b'{"x":1}'}


def test_a_certificate_for_another_name_fails_the_attempt(tls_receiver):
    port, ca, seen = tls_receiver
    target = Target(scheme="https", host="other.example.test", port=port, path="/hook", address="127.0.0.1")
    result = post(target, b"{}", {}, ca_certs=ca)
    assert result.http_status is None and result.error.startswith("TLS error")
    assert "body" not in seen and seen["sni"] == "other.example.test"


def test_an_untrusted_certificate_fails_the_attempt(tls_receiver):
    port, _, seen = tls_receiver
    target = Target(scheme="https", host=NAME, port=port, path="/hook", address="127.0.0.1")
    result = post(target, b"{}", {})  # the system's CAs: the test CA is not among them
    assert result.http_status is None and result.error.startswith("TLS error")
    assert "body" not in seen


def test_a_slow_receiver_is_cut_off_at_the_total_timeout():
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers
    try:
        target = Target(scheme="http", host="127.0.0.1", port=listener.getsockname()[1], path="/", address="127.0.0.1")
        started = time.monotonic()
        result = post(target, b"{}", {}, connect_timeout=0.5, total_timeout=1.0)
        assert result.http_status is None and "timeout" in result.error
        assert time.monotonic() - started < 3
    finally:
        listener.close()
