"""One logging setup for both daemons (`gpucap agent run`, `gpucap ledger serve`).

Every line carries an RFC 3339 UTC timestamp with milliseconds, so that an agent's and a
ledger's lines interleave correctly in one journal whatever the hosts' time zones. Two formats:

    text  2026-12-01T15:12:02.123Z WARNING gpucap.ledger: refused 401 revoked ...
    json  {"ts": "2026-12-01T15:12:02.123Z", "level": "WARNING", "logger": "gpucap.ledger",
           "message": "refused 401 revoked ...", "client": "10.0.0.7:51234", ...}

A JSON line also carries a record's structured extras (`extra=` of a logging call: client,
token_id, reason, status, path, ...), and uvicorn's access records as client, method, path,
status. uvicorn's loggers get no handlers of their own: they propagate to the one root handler
(`log_config` is also what uvicorn.Config takes as `log_config`); alembic's per-migration INFO
chatter is left out (WARNING and above). Control characters in a text line's message are
escaped, so a client-supplied value cannot forge a line.
"""

from __future__ import annotations

import json
import logging
import logging.config
import logging.handlers
import time
from typing import Any

from gpucap.core.errors import InputError

FORMATS = ("text", "json")
ENV = "GPUCAP_LOG_FORMAT"

# What every LogRecord has; anything else on a record came from `extra=` (uvicorn's
# `color_message` is its message with terminal colour codes: not a field).
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
# C0 controls and DEL as visible escapes (a tab stays a tab).
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F) if c != 0x09}
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


def check_format(value: str, where: str) -> str:
    """The log format named by `value`; InputError naming `where` (the flag) otherwise."""
    fmt = value.strip().lower()
    if fmt not in FORMATS:
        raise InputError(where, f"expected text or json, got {value!r}")
    return fmt


def utc_timestamp(record: logging.LogRecord) -> str:
    """`2026-12-01T15:12:02.123Z`: the record's creation time, UTC, in milliseconds."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{whole}.{int(record.msecs):03d}Z"


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record: its `extra=` values, and an access line's parts."""
    fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    args = record.args
    if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
        fields.update(zip(_ACCESS_FIELDS, args, strict=True))
    return fields


class TextFormatter(logging.Formatter):
    """`TIMESTAMP LEVEL LOGGER: MESSAGE`, then a traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().translate(_ESCAPES)
        line = f"{utc_timestamp(record)} {record.levelname} {record.name}: {message}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the extras, and `exc`."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": utc_timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extras(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def log_config(fmt: str, level: str | int = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` document: one stderr handler on the root logger in `fmt`,
    uvicorn's loggers propagating to it. A fresh dict on each call (dictConfig consumes it)."""
    formatter = JsonFormatter if check_format(fmt, "--log-format") == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"gpucap": {"()": formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "gpucap",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            **{
                name: {"handlers": [], "propagate": True}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
            "alembic": {"level": "WARNING"},
        },
    }


def configure(fmt: str, level: str | int = "INFO") -> None:
    """Route every logger of the process through one stderr handler in `fmt`."""
    logging.config.dictConfig(log_config(fmt, level))


def hold() -> logging.handlers.MemoryHandler:
    """Keep the records logged until the format is known (while reading the configuration
    that names it); `release` writes them in that format."""
    held = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
    logging.getLogger().addHandler(held)
    return held


def release(held: logging.handlers.MemoryHandler, fmt: str, level: str | int = "INFO") -> None:
    """Configure `fmt` and write what `held` kept through the new handler, in order."""
    logging.getLogger().removeHandler(held)
    configure(fmt, level)
    root = logging.getLogger()
    for record in held.buffer:
        if logging.getLogger(record.name).isEnabledFor(record.levelno):  # the level just set
            for handler in root.handlers:
                handler.handle(record)
    held.buffer.clear()
    held.close()
