"""A small closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending back to back.

asyncio with raw sockets keeps the client's own cost low (it shares the 2 cores with the server),
and records every request's latency so the bench can report p50/p99 and draw distributions.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Result:
    """What one run saw: latencies in seconds (successes only), statuses, wall time."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def merge(self, other: "Result") -> None:
        self.latencies += other.latencies
        self.statuses.update(other.statuses)
        self.errors += other.errors
        self.seconds += other.seconds


RequestFactory = Callable[[int], bytes]  # connection index -> raw request bytes


def build_request(method: str, path: str, host: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in {"POST", "PUT", "PATCH"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, close, chunked = 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            close = True
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, close


async def _connection(index: int, host: str, port: int, make: RequestFactory, stop_at: float,
                      expect: set[int], result: Result) -> None:
    reader = writer = None
    while time.perf_counter() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            request = make(index)
            started = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status, close = await _read_response(reader)
            elapsed = time.perf_counter() - started
            result.statuses[status] += 1
            if status in expect:
                result.latencies.append(elapsed)
            else:
                result.errors += 1
            if close:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def run(host: str, port: int, make: RequestFactory, concurrency: int, seconds: float,
        expect: set[int] = frozenset({200})) -> Result:
    """Run `concurrency` connections for `seconds`; returns every successful request's latency."""
    result = Result()

    async def main() -> None:
        stop_at = time.perf_counter() + seconds
        started = time.perf_counter()
        await asyncio.gather(*(_connection(i, host, port, make, stop_at, set(expect), result)
                               for i in range(concurrency)))
        result.seconds = time.perf_counter() - started

    asyncio.run(main())
    return result


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]
