"""What every drill shares: its result block, the real commands as child processes (ledgers,
agents), the tokens, and what the drills read back (the agents' acknowledgements, the ledger's
nodes and log, `gpucap ledger verify`). `pg.py` has the private PostgreSQL cluster,
`ledgered.py` the comparison that ends each delivery drill.

Everything listens on 127.0.0.1 and lives under one temporary directory per drill, removed
afterwards. The agents run with `--log-level DEBUG`, whose `report N acknowledged: accepted |
duplicate` lines are the agent's own record of what the ledger acknowledged; a log file
survives a kill -9, so it is the evidence the drills compare the ledger's record with.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

REGISTRY = """\
ruleset: us-bis-ai-diffusion-2025
entities:
  - {id: acme, headquarters: US, status: uveu}
sites:
  - {id: acme-us-1, entity: acme, country: US}
  - {id: acme-us-2, entity: acme, country: US}
"""

_ACK = re.compile(r"report (\d+) acknowledged: (accepted|duplicate)")
_CHANGE = re.compile(r"inventory changed \(report (\d+)\)")
_NOT_DELIVERED = re.compile(r"report (\d+) not delivered \(([^)]*)\)")
# The log's time stamps: ISO 8601 UTC (`2026-12-01T15:18:58.955Z`) or logging's default local
# `2026-12-01 15:18:58,955`.
_ACK_AT = re.compile(
    r"^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)[.,](\d{3})(Z?) DEBUG \S+: report \d+ acknowledged",
    re.M,
)


class DrillError(Exception):
    """A part of a drill could not be set up or did not come up (the drill FAILs with it)."""


@dataclass
class Result:
    """One drill's block: what was done, the counts, the checks, and the failures found."""

    name: str
    did: str = ""
    sent: str = "-"
    acknowledged: str = "-"
    stored: str = "-"
    duplicates: str = "-"
    verify: str = "-"
    recovery_s: str = "-"
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def check(self, ok: bool, failure: str) -> None:
        if not ok:
            self.failures.append(failure)

    def render(self) -> str:
        rows = [
            ("done", self.did),
            ("sent", self.sent),
            ("acknowledged", self.acknowledged),
            ("stored", self.stored),
            ("duplicates", self.duplicates),
            ("verify", self.verify),
            ("recovery", self.recovery_s),
            *(("note", n) for n in self.notes),
            *(("FAILURE", f) for f in self.failures),
            ("time", f"{self.elapsed_s:.1f} s"),
        ]
        head = f"== drill {self.name}: {'PASS' if self.passed else 'FAIL'}"
        return "\n".join([head, *(f"   {k:<13} {v}" for k, v in rows)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


KEEP = {"workdirs": False}  # `python -m drills --keep`: leave each drill's files for a post-mortem


@contextmanager
def workdir(name: str) -> Iterator[Path]:
    """A fresh temporary directory for one drill's databases, spools and logs."""
    path = Path(tempfile.mkdtemp(prefix=f"gpucap-drill-{name}-"))
    try:
        yield path
    finally:
        if KEEP["workdirs"]:
            print(f"   (kept {path})", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def gpucap(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """One gpucap command to completion (stdout and stderr captured)."""
    return subprocess.run(  # noqa: S603 (our own CLI)
        [sys.executable, "-m", "gpucap", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=180,
        check=False,
    )


def wait_for(condition: Callable[[], bool], what: str, limit_s: float) -> float:
    """Seconds until `condition()` held, polled every 50 ms; DrillError after `limit_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > limit_s:
            raise DrillError(f"gave up after {limit_s:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def answers(url: str, status: int = 200) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == status
    except httpx.HTTPError:
        return False


class Child:
    """A gpucap command as a long-running child; its output appended to `log` across
    restarts."""

    def __init__(self, name: str, log: Path, args: list[str], env: dict[str, str]) -> None:
        self.name, self.log, self.args, self.env = name, log, args, env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 (our own CLI)
                [sys.executable, "-m", "gpucap", *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> int | None:
        """SIGTERM (what systemd sends), SIGKILL if it lingers; the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def tail(self, chars: int = 1500) -> str:
        return self.text()[-chars:]


class LedgerProc(Child):
    """`gpucap ledger serve` on a fixed loopback port (a restart comes back on it)."""

    def __init__(
        self, name: str, root: Path, db_url: str, registry: Path, env: dict[str, str]
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["ledger", "serve", "--registry", str(registry), "--db", db_url]
        args += ["--port", str(self.port)]
        base = {"GPUCAP_REVOCATION_TTL_S": "0", "GPUCAP_REPORT_INTERVAL_S": "1"}
        super().__init__(name, root / f"{name}.log", args, {**base, **env})

    def start_ready(self, limit_s: float = 60) -> float:
        """Start and wait for `/readyz`; the seconds it took."""
        self.start()

        def ready() -> bool:
            if not self.alive():
                raise DrillError(f"{self.name} exited:\n{self.tail()}")
            return answers(f"{self.url}/readyz")

        return wait_for(ready, f"{self.name} to be ready", limit_s)


@dataclass(frozen=True)
class AgentSpec:
    node: str
    site: str
    fake: str


class AgentProc(Child):
    """`gpucap agent run` on a fake NVML scenario, fast intervals and retries."""

    def __init__(
        self,
        spec: AgentSpec,
        root: Path,
        ledger_url: str,
        token: str,
        interval_s: float = 0.2,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.spec, self.ledger_url = spec, ledger_url
        self.spool = root / "spool" / spec.node
        args = [
            "agent", "run", "--ledger", ledger_url, "--node-id", spec.node, "--site", spec.site,
            "--fake", spec.fake, "--spool", str(self.spool), "--interval", str(interval_s),
            "--retry-initial", "0.05", "--retry-max", "0.5", "--ledger-timeout", "5",
            "--log-level", "DEBUG", *extra,
        ]  # fmt: skip
        env = {"GPUCAP_TOKEN": token}
        super().__init__(f"agent-{spec.node}", root / f"agent-{spec.node}.log", args, env)

    def acks(self) -> list[tuple[int, str]]:
        """(seq, accepted|duplicate) for every acknowledgement this agent logged."""
        return [(int(m[1]), m[2]) for m in _ACK.finditer(self.text())]

    def first_ack_after(self, wall: float) -> float | None:
        """The Unix time of the first acknowledgement logged at or after `wall` (to the
        millisecond of the log's stamps)."""
        for m in _ACK_AT.finditer(self.text()):
            moment = datetime.strptime(f"{m[1]} {m[2]}.{m[3]}", "%Y-%m-%d %H:%M:%S.%f")
            stamp = (moment.replace(tzinfo=UTC) if m[4] else moment).timestamp()
            if stamp >= wall:
                return stamp
        return None

    def changes(self) -> set[int]:
        return {int(m[1]) for m in _CHANGE.finditer(self.text())}

    def failures(self) -> list[tuple[int, str]]:
        return [(int(m[1]), m[2]) for m in _NOT_DELIVERED.finditer(self.text())]


def recovered(agents: list[AgentProc], wall: float, limit_s: float = 60) -> float:
    """Seconds from `wall` (a Unix time) until each of `agents` had a report acknowledged."""
    wait_for(lambda: all(a.first_ack_after(wall) for a in agents), "acknowledgements", limit_s)
    return max(a.first_ack_after(wall) or wall for a in agents) - wall


def issue_token(db_url: str, *flags: str) -> str:
    proc = gpucap("ledger", "token", "--db", db_url, *flags)
    if proc.returncode != 0:
        raise DrillError(f"gpucap ledger token {' '.join(flags)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def verify(db_url: str) -> tuple[bool, str]:
    """`gpucap ledger verify --projections`: (clean, its first line or its error)."""
    proc = gpucap("ledger", "verify", "--db", db_url, "--projections")
    text = (proc.stdout if proc.returncode == 0 else proc.stderr).strip()
    return proc.returncode == 0, text.splitlines()[0] if text else f"exit {proc.returncode}"


def nodes(url: str, token: str) -> dict[str, dict[str, Any]]:
    answer = httpx.get(f"{url}/v1/nodes", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    answer.raise_for_status()
    return {row["node"]: row for row in answer.json()["nodes"]}


def report_entries(db_url: str) -> list[tuple[str, int]]:
    """(node, seq) of every `report` entry of the log (integrated or pending)."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT leaf FROM log_entry WHERE kind = 'report'"))
            bodies = [json.loads(r[0])["body"] for r in rows]
    finally:
        engine.dispose()
    return [(b["node_id"], int(b["seq"])) for b in bodies]


def expected_devices(fake: str) -> int:
    """How many devices the fake node holds once its scenario has settled."""
    settled = {"hot-unplug": 4}  # one GPU vanishes, then a new one takes its slot: 4 again
    if fake in settled:
        return settled[fake]
    proc = gpucap("agent", "inventory", "--fake", fake, "--format", "json")
    if proc.returncode != 0:
        raise DrillError(f"gpucap agent inventory --fake {fake}: {proc.stderr.strip()}")
    return len(json.loads(proc.stdout)["devices"])
