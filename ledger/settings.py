"""Ledger configuration: CLI flags first, then GPUCAP_* variables, then defaults.

Nothing here is read at import time; `Settings.from_env(environ, **overrides)` is called by the
CLI (or a test) and the result is handed to `create_app(settings)`. The secrets can come from
files (GPUCAP_LEDGER_SECRET_FILE, GPUCAP_METRICS_TOKEN_FILE: a systemd credential, a Secret
volume), which keeps them out of the environment; a variable and its file both set is exit 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gpucap.core import logsetup
from gpucap.core.credfiles import read_secret
from gpucap.core.errors import InputError

DEFAULT_DB = "sqlite:///gpucap.db"


def utc_now() -> datetime:
    """The ledger's clock (timezone-aware UTC); tests hand `Settings` a fake instead."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Settings:
    """Everything a ledger process needs; durations in seconds, sizes in bytes."""

    db_url: str = DEFAULT_DB
    registry: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8470
    workers: int = 1  # `serve` worker processes on one database
    access_log: bool = False  # uvicorn's per-request log line (costly at thousands of reports/s)
    log_format: str = "text"  # the daemon's log lines: text or json (gpucap.core.logsetup)
    secret: str | None = None  # token signing key; None: the key stored in the database
    report_interval_s: float = (
        60.0  # the agents' reporting interval (the agent default, GPUCAP_INTERVAL)
    )
    stale_intervals: float = 3.0  # a node silent for this many intervals is stale
    revocation_ttl_s: float = 5.0  # how long a process trusts its cached revocation list
    max_body_bytes: int = 4 * 1024 * 1024
    header_timeout_s: float = 10.0  # a request's headers must arrive within this (slow clients)
    body_timeout_s: float = 30.0  # and its body within this, once the headers are in
    limit_concurrency: int = 1000  # connections and requests at once; beyond: 503
    metrics_token: str | None = None  # bearer token a /metrics scrape must carry; None: none
    metrics_host: str | None = None  # the metrics listener's address (None: the API's host)
    metrics_port: int | None = None  # serve /metrics here only; None: on the API's port
    tls_cert: Path | None = None  # PEM certificate chain: the listeners serve HTTPS
    tls_key: Path | None = None  # its unencrypted PEM private key
    sqlite_synchronous: str = "FULL"  # FULL: a commit is on disk before the reply
    log_origin: str | None = None  # checkpoint origin and key name; None: from the ledger's id
    log_key_file: Path | None = None  # Ed25519 PEM key; None: the key kept in the database
    log_integrate_interval_s: float = 0.5  # how often pending entries from elsewhere are signed
    log_checkpoint_keep_s: float = 60.0  # one checkpoint per this interval is kept as history
    shipment_grace_days: int = 30  # a shipped serial unreported this long after `shipped`: missing
    clock: Callable[[], datetime] = field(default=utc_now, compare=False)

    @property
    def stale_after_s(self) -> float:
        return self.report_interval_s * self.stale_intervals

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Settings from GPUCAP_* variables, with explicit (non-None) overrides on top."""
        base = cls()
        values: dict[str, Any] = {}
        text = {
            "GPUCAP_DB": "db_url",
            "GPUCAP_LEDGER_HOST": "host",
            "GPUCAP_LEDGER_SECRET": "secret",
            "GPUCAP_SQLITE_SYNCHRONOUS": "sqlite_synchronous",
            "GPUCAP_LOG_ORIGIN": "log_origin",
            "GPUCAP_METRICS_TOKEN": "metrics_token",
            "GPUCAP_LEDGER_METRICS_HOST": "metrics_host",
        }
        for var, name in text.items():
            if environ.get(var):
                values[name] = environ[var]
        if environ.get("GPUCAP_REGISTRY"):
            values["registry"] = Path(environ["GPUCAP_REGISTRY"])
        if environ.get("GPUCAP_LOG_KEY_FILE"):
            values["log_key_file"] = Path(environ["GPUCAP_LOG_KEY_FILE"])
        for var, name in (
            ("GPUCAP_LEDGER_TLS_CERT", "tls_cert"),
            ("GPUCAP_LEDGER_TLS_KEY", "tls_key"),
        ):
            if environ.get(var):
                values[name] = Path(environ[var])
        secret_files = {
            "GPUCAP_LEDGER_SECRET_FILE": ("GPUCAP_LEDGER_SECRET", "secret"),
            "GPUCAP_METRICS_TOKEN_FILE": ("GPUCAP_METRICS_TOKEN", "metrics_token"),
        }
        for file_var, (var, name) in secret_files.items():
            if environ.get(file_var):
                if environ.get(var):
                    raise InputError(file_var, f"set {var} or {file_var}, not both")
                values[name] = read_secret(Path(environ[file_var]), file_var)
        numbers: dict[str, tuple[str, type[int] | type[float]]] = {
            "GPUCAP_LEDGER_PORT": ("port", int),
            "GPUCAP_LEDGER_WORKERS": ("workers", int),
            "GPUCAP_REPORT_INTERVAL_S": ("report_interval_s", float),
            "GPUCAP_STALE_INTERVALS": ("stale_intervals", float),
            "GPUCAP_REVOCATION_TTL_S": ("revocation_ttl_s", float),
            "GPUCAP_MAX_BODY_BYTES": ("max_body_bytes", int),
            "GPUCAP_LEDGER_HEADER_TIMEOUT_S": ("header_timeout_s", float),
            "GPUCAP_LEDGER_BODY_TIMEOUT_S": ("body_timeout_s", float),
            "GPUCAP_LEDGER_LIMIT_CONCURRENCY": ("limit_concurrency", int),
            "GPUCAP_LEDGER_METRICS_PORT": ("metrics_port", int),
            "GPUCAP_LOG_INTEGRATE_INTERVAL_S": ("log_integrate_interval_s", float),
            "GPUCAP_LOG_CHECKPOINT_KEEP_S": ("log_checkpoint_keep_s", float),
            "GPUCAP_SHIPMENT_GRACE_DAYS": ("shipment_grace_days", int),
        }
        for var, (name, kind) in numbers.items():
            raw = environ.get(var)
            if raw:
                try:
                    number = kind(raw)
                except ValueError:
                    raise InputError(var, f"expected a number, got {raw!r}") from None
                if not math.isfinite(number) or number < 0:
                    raise InputError(var, f"must be a finite, non-negative number, got {raw!r}")
                values[name] = number
        if environ.get("GPUCAP_LEDGER_ACCESS_LOG"):
            flag = environ["GPUCAP_LEDGER_ACCESS_LOG"].strip().lower()
            if flag not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
                raise InputError("GPUCAP_LEDGER_ACCESS_LOG", f"expected 1 or 0, got {flag!r}")
            values["access_log"] = flag in ("1", "true", "yes", "on")
        if environ.get(logsetup.ENV):
            values["log_format"] = logsetup.check_format(environ[logsetup.ENV], logsetup.ENV)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if overrides.get("log_format") is not None:
            values["log_format"] = logsetup.check_format(overrides["log_format"], "--log-format")
        settings = replace(base, **values)
        if not 1 <= settings.port <= 65535:
            raise InputError("--port", f"must be a TCP port, 1 to 65535, got {settings.port}")
        if settings.metrics_port is not None and not 1 <= settings.metrics_port <= 65535:
            raise InputError(
                "--metrics-port", f"must be a TCP port, 1 to 65535, got {settings.metrics_port}"
            )
        if settings.metrics_port is not None and settings.metrics_port == settings.port:
            raise InputError("--metrics-port", "must differ from --port")
        if (settings.tls_cert is None) != (settings.tls_key is None):
            missing = "--tls-cert" if settings.tls_cert is None else "--tls-key"
            raise InputError(missing, "give --tls-cert and --tls-key together")
        if settings.metrics_token is not None and len(settings.metrics_token) < 16:
            raise InputError("GPUCAP_METRICS_TOKEN", "must be at least 16 characters")
        for name, flag in (
            ("header_timeout_s", "GPUCAP_LEDGER_HEADER_TIMEOUT_S"),
            ("body_timeout_s", "GPUCAP_LEDGER_BODY_TIMEOUT_S"),
        ):
            if getattr(settings, name) <= 0:
                raise InputError(flag, "must be above 0 seconds")
        if settings.limit_concurrency < 1:
            raise InputError("--limit-concurrency", "must be at least 1")
        if settings.workers < 1:
            raise InputError("--workers", f"must be at least 1, got {settings.workers}")
        origin = settings.log_origin
        if origin is not None and (
            not origin.isprintable() or "+" in origin or any(c.isspace() for c in origin)
        ):
            # The origin is also the signed note's key name: no spaces, no '+' (C2SP signed-note).
            raise InputError("GPUCAP_LOG_ORIGIN", "must be non-empty, without spaces or '+'")
        if settings.sqlite_synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise InputError("GPUCAP_SQLITE_SYNCHRONOUS", "expected OFF, NORMAL, FULL or EXTRA")
        return settings


def iso_instant(moment: datetime) -> str:
    """A fixed-width UTC instant (`2026-01-05T10:00:00.000000Z`) that sorts as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_instant(text: str) -> datetime:
    """The inverse of `iso_instant` (timezone-aware UTC)."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
