"""The agent's configuration: command-line flags, a GPUCAP_* config file, the environment.

Precedence, highest first: a flag, then the config file (`--config`/GPUCAP_CONFIG, re-read on
SIGHUP), then the process environment (e.g. a systemd EnvironmentFile), then the default.
The config file uses EnvironmentFile syntax (`GPUCAP_LEDGER=https://...`, `#` comments), so one
file serves both systemd and reloads. An unknown GPUCAP_* key in it (a typo) is logged as a
warning and ignored; other keys are left alone, since systemd hands them to the process as its
environment (HTTPS_PROXY, SSL_CERT_FILE, ...).

The token is `--token`/GPUCAP_TOKEN or the contents of `--token-file`/GPUCAP_TOKEN_FILE (a
systemd credential, a Secret volume: off the command line and out of the environment). Of the
two, the one given at the higher level above wins, the other is logged as ignored; both at the
same level is a ConfigError. The file is read again on every reload.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from gpucap.agent.errors import ConfigError
from gpucap.core.credfiles import client_context, read_secret
from gpucap.core.errors import InputError
from gpucap.core.logsetup import FORMATS

log = logging.getLogger("gpucap.agent.config")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be positive")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number 0-65535")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _ca_file(text: str) -> Path:
    """A PEM CA bundle, loaded once here so that a bad file is an error at start."""
    try:
        client_context(Path(text), "")
    except InputError as exc:
        raise ValueError(exc.reason) from None
    return Path(text)


def _log_format(text: str) -> str:
    fmt = text.strip().lower()
    if fmt not in FORMATS:
        raise ValueError("expected text or json")
    return fmt


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return text.rstrip("/")


# (field, flag, environment variable, default, parser, reloadable on SIGHUP, meaning)
OPTIONS: tuple[tuple[str, str, str, str | None, Callable[[str], Any], bool, str], ...] = (
    ("ledger", "--ledger", "GPUCAP_LEDGER", None, _url, True, "ledger base URL"),
    ("token", "--token", "GPUCAP_TOKEN", None, str, True, "bearer token for the ledger"),
    (
        "token_file",
        "--token-file",
        "GPUCAP_TOKEN_FILE",
        None,
        Path,
        True,
        "file holding the bearer token, read at start and on reload (instead of --token)",
    ),
    (
        "ca_file",
        "--ca-file",
        "GPUCAP_CA_FILE",
        None,
        _ca_file,
        False,
        "PEM CA bundle an https:// ledger's certificate must chain to (unset: the system's)",
    ),
    ("node_id", "--node-id", "GPUCAP_NODE_ID", None, str, False, "this node's id in the ledger"),
    ("site", "--site", "GPUCAP_SITE", None, str, True, "the site the node belongs to"),
    (
        "interval_seconds",
        "--interval",
        "GPUCAP_INTERVAL",
        "60",
        _positive,
        True,
        "seconds between collections",
    ),
    (
        "spool",
        "--spool",
        "GPUCAP_SPOOL",
        "/var/lib/gpucap-agent",
        Path,
        False,
        "spool directory (durable queue of reports)",
    ),
    (
        "metrics_port",
        "--metrics-port",
        "GPUCAP_METRICS_PORT",
        None,
        _port,
        False,
        "serve the agent's metrics on this port (unset: no metrics server)",
    ),
    (
        "metrics_host",
        "--metrics-host",
        "GPUCAP_METRICS_HOST",
        "0.0.0.0",  # noqa: S104 (a scrape target must be reachable from Prometheus)
        str,
        False,
        "address the metrics server binds",
    ),
    (
        "fake",
        "--fake",
        "GPUCAP_FAKE",
        None,
        str,
        False,
        "run on a fake NVML scenario (name or YAML file) instead of the real NVML",
    ),
    (
        "nvml_timeout_seconds",
        "--nvml-timeout",
        "GPUCAP_NVML_TIMEOUT",
        "10",
        _positive,
        True,
        "a collection that takes longer is abandoned as hung",
    ),
    (
        "ledger_timeout_seconds",
        "--ledger-timeout",
        "GPUCAP_LEDGER_TIMEOUT",
        "10",
        _positive,
        True,
        "HTTP timeout for one report",
    ),
    (
        "retry_initial_seconds",
        "--retry-initial",
        "GPUCAP_RETRY_INITIAL",
        "1",
        _positive,
        True,
        "first retry delay after a failed send (doubles, with jitter)",
    ),
    (
        "retry_max_seconds",
        "--retry-max",
        "GPUCAP_RETRY_MAX",
        "300",
        _positive,
        True,
        "longest retry delay",
    ),
    (
        "spool_max_reports",
        "--spool-max-reports",
        "GPUCAP_SPOOL_MAX_REPORTS",
        "10000",
        _count,
        True,
        "spool bound; oldest heartbeats are dropped first",
    ),
    (
        "log_level",
        "--log-level",
        "GPUCAP_LOG_LEVEL",
        "INFO",
        str.upper,
        True,
        "DEBUG, INFO, WARNING or ERROR",
    ),
    (
        "log_format",
        "--log-format",
        "GPUCAP_LOG_FORMAT",
        "text",
        _log_format,
        False,
        "log lines as text or json (one object per line)",
    ),
)
CONFIG_ENV = "GPUCAP_CONFIG"
_REQUIRED = ("ledger", "node_id", "site")  # and a token: --token or --token-file


@dataclass(frozen=True)
class AgentConfig:
    ledger: str
    token: str
    node_id: str
    site: str
    interval_seconds: float
    spool: Path
    metrics_port: int | None
    metrics_host: str
    fake: str | None
    nvml_timeout_seconds: float
    ledger_timeout_seconds: float
    retry_initial_seconds: float
    retry_max_seconds: float
    spool_max_reports: int
    log_level: str
    token_file: Path | None = None
    ca_file: Path | None = None
    log_format: str = "text"
    config_file: Path | None = None

    def reloadable_diff(self, other: AgentConfig) -> tuple[list[str], list[str]]:
        """(applied, needs restart): the fields that differ between two configurations."""
        applied: list[str] = []
        restart: list[str] = []
        reloadable = {o[0]: o[5] for o in OPTIONS}
        for f in fields(self):
            if f.name != "config_file" and getattr(self, f.name) != getattr(other, f.name):
                (applied if reloadable.get(f.name) else restart).append(f.name)
        return applied, restart


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile reads them (comments, optional quotes)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read config file: {exc.strerror or exc}") from exc
    values: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{n}", "expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_config(
    flags: Mapping[str, str | None],
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> AgentConfig:
    """Resolve every option; ConfigError names the flag/variable and the reason."""
    env = os.environ if environ is None else environ
    if config_file is None and env.get(CONFIG_ENV):
        config_file = Path(env[CONFIG_ENV])
    from_file = read_env_file(config_file) if config_file is not None else {}
    known = {o[2] for o in OPTIONS} | {CONFIG_ENV}
    for key in from_file:
        if key.startswith("GPUCAP_") and key not in known:
            log.warning("config file %s: unknown key %s ignored", config_file, key)
    values: dict[str, Any] = {}
    given: dict[str, tuple[int, str]] = {}  # option: (level, where), 0 the highest
    for name, flag, var, default, parse, _, _ in OPTIONS:
        raw, where, level = flags.get(name), flag, 0
        if raw is None and var in from_file:
            raw, where, level = from_file[var], f"{config_file}: {var}", 1
        if raw is None and var in env:
            raw, where, level = env[var], var, 2
        if raw is None:
            raw, where, level = default, f"default of {flag}", 3
        if raw is not None and raw != "":
            given[name] = (level, where)
        if raw is None or raw == "":
            if name in _REQUIRED:
                raise ConfigError(flag, f"required (or set {var})")
            values[name] = None
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(where, f"invalid value {raw!r}: {exc}") from exc
    values["token"] = _token(values, given)
    if values["log_level"] not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("--log-level", f"unknown level {values['log_level']!r}")
    return AgentConfig(**values, config_file=config_file)


def _token(values: Mapping[str, Any], given: Mapping[str, tuple[int, str]]) -> str:
    """The token: `--token`'s value or `--token-file`'s contents, whichever is given higher."""
    token, file = given.get("token"), given.get("token_file")
    if token is None and file is None:
        raise ConfigError("--token", "required (or set GPUCAP_TOKEN, or give --token-file)")
    if token is not None and file is not None:
        if token[0] == file[0]:
            raise ConfigError(file[1], f"give a token or a token file, not both ({token[1]})")
        ignored = file if token[0] < file[0] else token
        log.warning("token: %s is ignored, overridden by %s", ignored[1], min(token, file)[1])
    if file is not None and (token is None or file[0] < token[0]):
        try:
            return read_secret(values["token_file"], file[1])
        except InputError as exc:
            raise ConfigError(exc.path, exc.reason) from None
    result: str = values["token"]
    return result
