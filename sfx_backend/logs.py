"""Structured logging: one line per event, JSON in production, readable text in development.

Context (`request_id`, `user_id`, `job_id`, `key`) travels in `extra={...}`; the request id of the
current HTTP request is added automatically. Secrets never go into `extra`.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _context() -> dict:
    try:
        from flask import g, has_request_context
        if has_request_context() and getattr(g, "request_id", None):
            return {"request_id": g.request_id}
    except Exception:  # noqa: BLE001 - logging must never fail
        pass
    return {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
                 "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        entry.update(_context())
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED and v is not None})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {**_context(), **{k: v for k, v in vars(record).items() if k not in _RESERVED and v is not None}}
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{datetime.fromtimestamp(record.created).strftime('%H:%M:%S')} {record.levelname:<7} " \
               f"{record.name}: {record.getMessage()}" + (f" [{extra}]" if extra else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Install one handler on the root logger (idempotent)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_sfx", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._sfx = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
