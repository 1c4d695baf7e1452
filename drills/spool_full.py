"""`spool-full`: the agent's spool on a small tmpfs that a filler keeps full for a while.

While full, no report can be written (nor the sequence number reserved): the agent must keep
running, log each distinct error once rather than once per step, count every failed step in
`gpucap_agent_spool_errors_total`, and deliver again, losing nothing acknowledged, once the
filler is removed. Mounting needs root (as here and in CI); a mount that fails is the drill's
FAIL, with the reason, never a skip.
"""

from __future__ import annotations

import errno
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx

from drills.common import (
    REGISTRY,
    AgentProc,
    AgentSpec,
    DrillError,
    LedgerProc,
    Result,
    free_port,
    issue_token,
    recovered,
    verify,
    wait_for,
    workdir,
)
from drills.ledgered import compare, fill

SIZE = "512k"
FULL_S = 4.0
_FAILING = re.compile(r"spool failing \(collection and delivery go on, retried\): (.*)")
_AGAIN = "spool working again"


class Filler:
    """Keeps a file system full: appends to one file until ENOSPC, and again whenever the agent
    frees space (an acknowledged report leaves the spool), until stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stop = threading.Event()
        self.full = threading.Event()
        self.bytes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        chunk = b"\0" * 4096
        with self.path.open("wb", buffering=0) as out:
            while not self.stop.is_set():
                try:
                    self.bytes += out.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    self.full.set()
                    time.sleep(0.01)

    def __enter__(self) -> Filler:
        self.thread.start()
        if not self.full.wait(30):
            raise DrillError(f"{self.path} not full after 30 s")
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.path.unlink()


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url, timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise DrillError(f"{name} not in {url}")


def spool_full() -> Result:
    result = Result("spool-full")
    with workdir("spool-full") as root:
        mount = root / "spoolfs"
        mount.mkdir()
        mounted = subprocess.run(  # noqa: S603 (fixed arguments)
            ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(mount)],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
        )
        if mounted.returncode != 0:
            result.failures.append(f"mount -t tmpfs failed: {mounted.stderr.strip()}")
            return result
        try:
            _run(result, root, mount)
        finally:
            subprocess.run(["umount", str(mount)], check=False)  # noqa: S603, S607
    return result


def _run(result: Result, root: Path, mount: Path) -> None:
    registry = root / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    db_url = f"sqlite:///{root / 'ledger.db'}"
    ledger = LedgerProc("ledger", root, db_url, registry, {})
    ledger.start_ready()
    spec = AgentSpec("n1", "acme-us-1", "dgx-h100")
    port = free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    token = issue_token(db_url, "--node", "n1", "--site", spec.site)
    agent = AgentProc(
        spec,
        mount,
        ledger.url,
        token,
        extra=("--metrics-port", str(port), "--metrics-host", "127.0.0.1"),
    )
    agent.log = root / "agent-n1.log"  # the log stays off the full file system
    try:
        agent.start()
        wait_for(lambda: len(agent.acks()) >= 5, "the agent's first reports", 60)
        errors_before = _metric(metrics, "gpucap_agent_spool_errors_total")
        with Filler(mount / "filler") as filler:
            time.sleep(FULL_S)
            alive = agent.alive()
            errors = _metric(metrics, "gpucap_agent_spool_errors_total") - errors_before
        freed = time.time()  # the filler is gone
        result.check(alive, f"the agent died on a full spool:\n{agent.tail()}")
        recovery = recovered([agent], freed)
        wait_for(lambda: _AGAIN in agent.text(), "the agent to log that the spool works", 30)
        lines = _FAILING.findall(agent.text())
        distinct = len(set(lines))
        result.notes.append(
            f"{errors:.0f} failed spool steps in {FULL_S:.0f} s full "
            f"(gpucap_agent_spool_errors_total), {len(lines)} error lines logged, "
            f"{distinct} distinct: " + " | ".join(sorted(set(lines)))
        )
        result.check(errors > 0, "no spool step failed while the file system was full")
        result.check(
            len(lines) == distinct,
            f"{len(lines)} error lines for {distinct} distinct errors (logged more than once)",
        )
        result.recovery_s = f"{recovery:.2f} s from freeing the space to the next acknowledgement"
        time.sleep(1.0)
        code = agent.stop()
        result.check(code == 0, f"agent exited {code} on SIGTERM:\n{agent.tail()}")
        fill(
            result, compare([agent], ledger.url, issue_token(db_url, "--operator", "d"), db_url), 1
        )
        result.did = (
            f"1 agent (0.2 s interval), spool on a {SIZE} tmpfs filled to ENOSPC "
            f"({filler.bytes} filler bytes) and kept full {FULL_S:.0f} s, then freed"
        )
    finally:
        agent.stop()
        ledger.stop()
    clean, text = verify(db_url)
    result.verify = text
    result.check(clean, f"gpucap ledger verify: {text}")
