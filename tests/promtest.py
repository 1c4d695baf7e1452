"""A real Prometheus on loopback for tests: the binary, a server on the shipped config, its API.

Used by the deployment test (fixed exporters) and the end-to-end test (ledger and agents as
processes). Outside CI a missing `prometheus` binary skips the test; under CI=true it fails.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpucap.demo import free_port
from gpucap.exporters.promconfig import render_prometheus_config
from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
SHIPPED_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"

Series = list[dict[str, Any]]


def required_binary(name: str) -> str:
    """A binary of Debian's `prometheus` package; skip without it, fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} not installed (Debian package `prometheus`)")
    return path


def prometheus_binary() -> str:
    return required_binary("prometheus")


def promtool() -> str:
    return required_binary("promtool")


@dataclass
class PrometheusServer:
    """A running Prometheus and the few parts of its HTTP API the tests need."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=5)
        response.raise_for_status()
        return response.json()

    def query(self, expr: str) -> Series:
        """The instant vector of `expr` now (`/api/v1/query`)."""
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", answer
        result: Series = answer["data"]["result"]
        return result

    def wait_for(
        self,
        expr: str,
        until: Callable[[Series], bool] = bool,
        timeout_s: float = 60.0,
        poll_s: float = 0.5,
    ) -> Series:
        """Poll `expr` until `until(result)` holds (default: a non-empty result); fail after
        `timeout_s` with the last result and the end of Prometheus's log."""
        deadline = time.monotonic() + timeout_s
        result: Series = []
        while True:
            try:
                result = self.query(expr)
            except httpx.HTTPError:
                result = []
            if until(result):
                return result
            if time.monotonic() >= deadline:
                break
            time.sleep(poll_s)
        pytest.fail(
            f"{expr} not as expected within {timeout_s:.0f} s; last result: {result}\n"
            f"prometheus log (end):\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_prometheus(
    workdir: Path,
    *,
    agent_targets: Sequence[str],
    ledger_targets: Sequence[str],
    interval_s: float = 1.0,
    ready_timeout_s: float = 30.0,
    ledger_token: str | None = None,
) -> Iterator[PrometheusServer]:
    """Prometheus on a free loopback port with the shipped configuration and rules, pointed at
    the given `host:port` targets, scraping and evaluating every `interval_s`; stopped on exit."""
    binary = prometheus_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    token_file = None
    if ledger_token is not None:
        token_file = workdir / "ledger-metrics-token"
        token_file.write_text(ledger_token + "\n")
    config.write_text(
        render_prometheus_config(
            SHIPPED_CONFIG.read_text(),
            agent_targets=agent_targets,
            ledger_targets=ledger_targets,
            rule_files=[str(SHIPPED_RULES)],
            scrape_interval_seconds=interval_s,
            ledger_token_file=None if token_file is None else str(token_file),
        )
    )
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_ready(server, ready_timeout_s)
        yield server
    finally:
        _stop(process)


def _wait_ready(server: PrometheusServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"prometheus exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"prometheus not ready after {timeout_s:.0f} s:\n{server.log_tail()}")
