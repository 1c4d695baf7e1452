"""What a running `gpucap ledger serve` writes to stderr: every line timestamped in UTC, in text
or JSON; each refused request one line naming the client, the route and the token's id (never
the token); a registry reload naming the digest now in force."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.requests import Request

from gpucap.ledger import tokens
from gpucap.ledger.app import log_refusal
from gpucap.ledger.service import Ledger
from gpucap.ledger.settings import Settings, utc_now
from gpucap.ledger.store import Store
from tests.ledger.support import REGISTRY, Clock, free_port, gpucap, log_kinds, report

STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
TEXT_LINE = re.compile(rf"({STAMP.pattern}) (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.*)")
METRICS_TOKEN = "metrics-0123456789abcdef"


@dataclass
class Line:
    ts: str
    level: str
    logger: str
    message: str
    fields: dict[str, Any]


def parse(out: str, fmt: str) -> list[Line]:
    """Every line of a daemon's output as a log line; fails on any line that is not one."""
    lines = []
    for raw in out.splitlines():
        if fmt == "json":
            doc = json.loads(raw)
            assert STAMP.fullmatch(doc["ts"]), raw
            fields = {k: v for k, v in doc.items() if k not in ("ts", "level", "logger")}
            lines.append(Line(doc["ts"], doc["level"], doc["logger"], doc["message"], fields))
        else:
            match = TEXT_LINE.fullmatch(raw)
            assert match is not None, f"not a timestamped log line: {raw!r}"
            lines.append(Line(*match.groups(), fields={}))
    return lines


@contextmanager
def serving(
    db_url: str, registry: Path, out: Path, args: list[str], env: dict[str, str]
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`gpucap ledger serve` with stdout and stderr in `out` (read while it runs)."""
    port = free_port()
    command = [sys.executable, "-m", "gpucap", "ledger", "serve", "--registry", str(registry)]
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [*command, "--db", db_url, "--port", str(port), *args],
            env={**os.environ, "GPUCAP_REVOCATION_TTL_S": "0", **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, out.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "ledger not ready in 60 s"
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(out: Path, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while out.read_text().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{out.read_text()}"
        time.sleep(0.1)


def registry_digest(db_url: str) -> str:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(sa.text("SELECT digest FROM registry")).scalar_one())
    finally:
        engine.dispose()


def issue(db_url: str) -> dict[str, tuple[str, str]]:
    """name -> (token id, token), issued into a migrated database."""
    store = Store.open(Settings(db_url=db_url))
    subjects: dict[str, tuple[str, dict[str, str]]] = {
        "node": ("node", {"node_id": "n1", "site_id": "acme-ae-1"}),
        "admin": ("operator", {"operator": "root"}),
        "acme": ("operator", {"operator": "ops", "entity": "acme"}),
        "gone": ("operator", {"operator": "leaver"}),
    }
    try:
        return {
            name: tokens.issue(store, kind, utc_now(), None, **subject)  # type: ignore[arg-type]
            for name, (kind, subject) in subjects.items()
        }
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "how", "workers"),
    [("text", "flag", "1"), ("json", "env", "1"), ("json", "flag", "2")],
)
def test_a_serving_ledger_logs_refusals_and_reloads_on_timestamped_lines(
    tmp_path: Path, fmt: str, how: str, workers: str
) -> None:
    """Text and JSON, one process and a supervisor with workers (whose metrics listener is
    its own): the same lines, each parsed, from start-up to shutdown."""
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    assert gpucap("ledger", "migrate", "--db", db_url).returncode == 0
    toks = issue(db_url)
    assert gpucap("ledger", "token", "--db", db_url, "--revoke", toks["gone"][0]).returncode == 0
    args = ["--access-log", *(["--log-format", fmt] if how == "flag" else [])]
    metrics_port = free_port() if workers != "1" else None
    env = {
        "GPUCAP_LEDGER_WORKERS": workers,
        "GPUCAP_MAX_BODY_BYTES": "100000",
        "GPUCAP_METRICS_TOKEN": METRICS_TOKEN,
        **({"GPUCAP_LOG_FORMAT": fmt} if how == "env" else {}),
        **({"GPUCAP_LEDGER_METRICS_PORT": str(metrics_port)} if metrics_port else {}),
    }
    out = tmp_path / "serve.log"

    def bearer(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {toks[name][1]}"}

    forged = toks["admin"][1][:-4] + ("AAAA" if not toks["admin"][1].endswith("AAAA") else "BBBB")
    with serving(db_url, registry, out, args, env) as (url, proc):
        metrics = f"http://127.0.0.1:{metrics_port}" if metrics_port else url
        first = registry_digest(db_url)
        calls = [
            (httpx.get(f"{url}/v1/headroom", headers=bearer("admin")), 200),
            (httpx.get(f"{url}/v1/headroom"), 401),
            (httpx.get(f"{url}/v1/headroom", headers={"Authorization": f"Bearer {forged}"}), 401),
            (httpx.get(f"{url}/v1/headroom", headers=bearer("gone")), 401),
            (httpx.get(f"{url}/v1/headroom", headers=bearer("node")), 403),
            (httpx.get(f"{url}/v1/log/entries", headers=bearer("acme")), 403),
            (httpx.get(f"{url}/v1/evidence", headers=bearer("acme")), 403),
            (httpx.post(f"{url}/v1/reports", json=report(node="n2"), headers=bearer("node")), 403),
            (httpx.post(f"{url}/v1/reports", content=b"{}", headers=bearer("node")), 415),
            (
                httpx.post(
                    f"{url}/v1/reports",
                    content=b"x" * 200_000,
                    headers={**bearer("node"), "content-type": "application/json"},
                ),
                413,
            ),
            (httpx.post(f"{url}/v1/reports", json={"seq": 1}, headers=bearer("node")), 422),
            (httpx.get(f"{metrics}/metrics"), 401),
        ]
        assert [r.status_code for r, _ in calls] == [status for _, status in calls]
        registry.write_text(REGISTRY.replace("gov_agreement: true", "gov_agreement: false"))
        proc.send_signal(signal.SIGHUP)
        wait_for(out, "recorded in the log by sighup")
        second = registry_digest(db_url)
        proc.send_signal(signal.SIGHUP)  # the same file again
        wait_for(out, "read by sighup: unchanged")
        registry.write_bytes(b"ruleset: [")
        proc.send_signal(signal.SIGHUP)
        wait_for(out, "registry not reloaded")
        proc.terminate()
        proc.wait(timeout=20)  # uvicorn re-raises SIGTERM once it has shut down: -15 is fine
    assert log_kinds(db_url) == ["registry", "registry"]
    text = out.read_text()
    lines = parse(text, fmt)
    for _id, token in toks.values():
        assert token not in text
        assert token.split(".")[2] not in text  # not even the MAC
    assert forged not in text
    assert any(ln.logger.startswith("uvicorn") for ln in lines)  # uvicorn's lines too

    refused = [
        ln for ln in lines if ln.logger == "gpucap.ledger" and ln.message.startswith("refused")
    ]
    expected = [
        (401, "no_token", "/v1/headroom", None),
        (401, "bad_signature", "/v1/headroom", None),
        (401, "revoked", "/v1/headroom", toks["gone"][0]),
        (403, "wrong_kind", "/v1/headroom", toks["node"][0]),
        (403, "out_of_scope", "/v1/log/entries", toks["acme"][0]),
        (403, "scope_forbidden", "/v1/evidence", toks["acme"][0]),
        (403, "node_mismatch", "/v1/reports", toks["node"][0]),
        (415, "unsupported_media_type", "/v1/reports", toks["node"][0]),
        (413, "too_large", "/v1/reports", toks["node"][0]),
        (422, "invalid", "/v1/reports", toks["node"][0]),
        (401, "metrics_token", "/metrics", None),
    ]
    assert len(refused) == len(expected), "\n".join(ln.message for ln in refused)
    for line, (status, reason, path, token_id) in zip(refused, expected, strict=True):
        assert line.level == ("WARNING" if status in (401, 403) else "INFO"), line
        assert line.message.startswith(f"refused {status} {reason}: "), line
        assert re.search(r" from 127\.0\.0\.1:\d+", line.message), line
        assert (f", token {token_id}:" in line.message) == (token_id is not None), line
        assert path in line.message
        if fmt == "json":
            assert line.fields["status"] == status
            assert line.fields["reason"] == reason
            assert line.fields["path"] == path
            assert line.fields["token_id"] == token_id
            assert re.fullmatch(r"127\.0\.0\.1:\d+", line.fields["client"])
    access = [ln for ln in lines if ln.logger == "uvicorn.access"]
    assert len(access) >= len(calls)
    if fmt == "json":
        assert {a.fields["status"] for a in access} >= {200, 401, 403, 413, 415, 422}
        assert all(a.fields["client"].startswith("127.0.0.1:") for a in access)

    loads = [ln.message for ln in lines if ln.message.startswith(f"registry {registry} ")]
    assert loads == [
        f"registry {registry} recorded in the log by registry-file: digest {first}, previous none",
        f"registry {registry} recorded in the log by sighup: digest {second}, previous {first}",
        f"registry {registry} read by sighup: unchanged, digest {second}",
    ]
    failed = [ln for ln in lines if "registry not reloaded" in ln.message]
    assert [ln.level for ln in failed] == ["ERROR"]


@pytest.mark.slow
@pytest.mark.parametrize("named", ["--log-format", "GPUCAP_LOG_FORMAT"])
def test_an_unknown_log_format_is_exit_2_naming_where_it_came_from(
    tmp_path: Path, named: str
) -> None:
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    flag = ["--log-format", "xml"] if named == "--log-format" else []
    env = {"GPUCAP_LOG_FORMAT": "xml" if not flag else "json"}  # the flag wins over the variable
    proc = gpucap("ledger", "serve", "--db", db_url, "--port", str(free_port()), *flag, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"gpucap: error: {named}: expected text or json, got 'xml'"]
    assert not (tmp_path / "ledger.db").exists()  # refused before the database was touched


def request(header: str | None, client: tuple[str, int] | None = ("10.0.0.7", 5123)) -> Request:
    """A request as the server hands it to a route (an ASGI scope)."""
    return Request(
        {
            "type": "http",
            "method": "GET",
            "scheme": "http",
            "server": ("ledger.test", 8470),
            "path": "/v1/headroom",
            "query_string": b"scope=site:acme-ae-1",
            "root_path": "",
            "headers": [] if header is None else [(b"authorization", header.encode())],
            "client": client,
        }
    )


def test_a_refusal_names_the_id_of_a_token_that_verifies_and_never_the_token(
    ledger: Ledger, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    now = clock()
    live = tokens.issue(ledger.store, "operator", now, None, operator="ops")
    expiring = tokens.issue(
        ledger.store, "operator", now, None, operator="temp", expires_at=now + timedelta(hours=1)
    )
    clock.moment = now + timedelta(hours=2)  # expired now: its signature still verifies
    forged = live[1][:-4] + ("AAAA" if not live[1].endswith("AAAA") else "BBBB")
    cases = [
        (f"Bearer {live[1]}", live[0]),
        (f"bearer {expiring[1]}", expiring[0]),
        (f"Bearer {forged}", None),  # its claims name live's id: anyone can write that
        (f"Basic {live[1]}", None),
        ("Bearer gpc1.not.atoken", None),
        (None, None),
    ]
    with caplog.at_level(logging.INFO, logger="gpucap.ledger"):
        for header, _ in cases:
            log_refusal(ledger, request(header), 401, "revoked", "a reason")
    assert [r.token_id for r in caplog.records] == [token_id for _, token_id in cases]
    for rec, (_, token_id) in zip(caplog.records, cases, strict=True):
        by = f", token {token_id}" if token_id else ""
        assert rec.getMessage() == (
            f"refused 401 revoked: GET /v1/headroom from 10.0.0.7:5123{by}: a reason"
        )
        assert (rec.levelname, rec.client, rec.path, rec.status) == (
            "WARNING",
            "10.0.0.7:5123",
            "/v1/headroom",
            401,
        )
        for secret in (live[1], expiring[1], live[1].split(".")[2]):
            assert secret not in rec.getMessage()
            assert secret not in json.dumps({k: str(v) for k, v in vars(rec).items()})


@pytest.mark.parametrize(
    ("status", "level"),
    [
        (401, "WARNING"),
        (403, "WARNING"),
        (503, "WARNING"),
        (413, "INFO"),
        (415, "INFO"),
        (422, "INFO"),
    ],
)
def test_a_refusal_s_level_and_a_request_without_a_known_peer(
    caplog: pytest.LogCaptureFixture, status: int, level: str
) -> None:
    with caplog.at_level(logging.INFO, logger="gpucap.ledger"):
        log_refusal(None, request("Bearer x", client=None), status, "some_reason", "why")
    (rec,) = caplog.records
    assert rec.levelname == level
    assert rec.getMessage() == f"refused {status} some_reason: GET /v1/headroom from unknown: why"
    assert (rec.client, rec.token_id, rec.reason, rec.detail) == (
        "unknown",
        None,
        "some_reason",
        "why",
    )
