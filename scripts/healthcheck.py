#!/usr/bin/env python3
"""Container health checks: `python scripts/healthcheck.py api|flower`. Exit 0 when healthy.

`api` asks GET /health on this container's PORT; `flower` asks Flower's open /healthcheck. (The
worker's check is `celery -A workers inspect ping`, see docker-compose.yml.)
"""
from __future__ import annotations

import sys
import urllib.request

from sfx_backend.config import load_config

TARGETS = {"api": "http://127.0.0.1:{port}/health", "flower": "http://127.0.0.1:5555/healthcheck"}


def main(argv: list[str]) -> int:
    role = argv[1] if len(argv) > 1 else "api"
    url = TARGETS[role].format(port=load_config()["PORT"])
    try:
        with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 - a fixed local URL
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"{role} unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
