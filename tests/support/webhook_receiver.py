"""A real HTTP receiver for webhook deliveries, on a loopback port in a thread of the test.

It records every request (method, path, headers, body, monotonic arrival time) and answers from a
script: a list of (status, headers) used in order, the last repeated. Webhook tests verify what it got
with `standardwebhooks.Webhook(secret).verify`, as a real receiver would.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when the body had arrived


class WebhookReceiver:
    def __init__(self, host: str = "127.0.0.1", answers: list[tuple[int, dict[str, str]]] | None = None) -> None:
        self.received: list[Received] = []
        self.answers = list(answers or [(200, {})])
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.arrived:
                    index = len(receiver.received)
                    receiver.received.append(Received("POST", self.path, dict(self.headers.items()), body,
                                                      time.time()))
                    receiver.arrived.notify_all()
                status, headers = receiver.answers[min(index, len(receiver.answers) - 1)]
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        server_class = ThreadingHTTPServer
        if ":" in host:
            import socket

            class V6(ThreadingHTTPServer):
                address_family = socket.AF_INET6
            server_class = V6
        self.server = server_class((host, 0), Handler)
        self.host = host
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/hooks/sfx"

    def wait(self, count: int = 1, timeout: float = 10.0) -> list[Received]:
        """The requests so far, once at least `count` have arrived (AssertionError after `timeout`)."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"{len(self.received)} webhook requests arrived, expected {count}")
            return list(self.received)

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
