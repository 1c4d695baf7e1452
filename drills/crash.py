"""Crash drills on PostgreSQL: two `gpucap ledger serve` processes on one private cluster and
four fake-NVML agents (two on each ledger, ledger-a's through a `HoldingProxy`); `kill-ledger`
kills ledger-a with SIGKILL right after it committed a report whose answer the proxy held back
(stored, not yet acknowledged: it must come back as `duplicate`) and restarts it;
`pg-restart` stops the cluster with `pg_ctl stop -m immediate` (a crash: no checkpoint, WAL
recovery at start) and starts it again while the ledgers keep running.

Both end the same way: the agents stop (SIGTERM), every acknowledged report is compared with
the ledger's record (`ledgered.compare`) and `gpucap ledger verify --projections` must be clean.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from drills.common import (
    REGISTRY,
    AgentProc,
    AgentSpec,
    DrillError,
    LedgerProc,
    Result,
    answers,
    gpucap,
    issue_token,
    nodes,
    recovered,
    verify,
    wait_for,
    workdir,
)
from drills.ledgered import compare, fill
from drills.pg import PgCluster
from drills.proxy import HoldingProxy

AGENTS = (
    AgentSpec("n1", "acme-us-1", "dgx-h100"),
    AgentSpec("n2", "acme-us-1", "hgx-h200"),
    AgentSpec("n3", "acme-us-2", "dgx-b200"),
    AgentSpec("n4", "acme-us-2", "hot-unplug"),  # three inventory changes in its first reports
)
RUN_S = 4.0  # load before and after the fault
_ACCEPTED = re.compile(rb'"status":\s*"accepted",\s*"seq":\s*(\d+)')


@dataclass
class Fleet:
    pg: PgCluster
    ledgers: tuple[LedgerProc, LedgerProc]
    agents: list[AgentProc]
    operator: str
    proxy: HoldingProxy  # between ledger-a and its agents

    def last_seqs(self, via: LedgerProc) -> dict[str, int]:
        return {n: row["last_seq"] for n, row in nodes(via.url, self.operator).items()}


@contextmanager
def fleet(root: Path) -> Iterator[Fleet]:
    pg = PgCluster(root)
    ledgers: list[LedgerProc] = []
    agents: list[AgentProc] = []
    proxy: HoldingProxy | None = None
    try:
        pg.init()
        registry = root / "registry.yaml"
        registry.write_text(REGISTRY, encoding="utf-8")
        migrated = gpucap("ledger", "migrate", "--db", pg.url)
        if migrated.returncode != 0:
            raise DrillError(f"gpucap ledger migrate: {migrated.stderr.strip()}")
        ledgers = [
            LedgerProc(name, root, pg.url, registry, {}) for name in ("ledger-a", "ledger-b")
        ]
        for ledger in ledgers:
            ledger.start_ready()
        operator = issue_token(pg.url, "--operator", "drill")
        proxy = HoldingProxy(ledgers[0].port)
        for i, spec in enumerate(AGENTS):
            token = issue_token(pg.url, "--node", spec.node, "--site", spec.site)
            agents.append(AgentProc(spec, root, (proxy.url, ledgers[1].url)[i % 2], token))
        for agent in agents:
            agent.start()
        for agent in agents:
            wait_for(lambda a=agent: bool(a.acks()), f"a first report from {agent.name}", 60)  # type: ignore[misc]
        yield Fleet(pg, (ledgers[0], ledgers[1]), agents, operator, proxy)
    finally:
        for child in [*agents, *ledgers]:
            child.stop()
        if proxy is not None:
            proxy.close()
        pg.close()


def _finish(result: Result, f: Fleet, via: LedgerProc) -> None:
    """Stop the agents, compare what they were told with what the ledger holds, verify."""
    for agent in f.agents:
        code = agent.stop()
        result.check(code == 0, f"{agent.name} exited {code} on SIGTERM:\n{agent.tail()}")
    fill(result, compare(f.agents, via.url, f.operator, f.pg.url), len(f.agents))
    clean, text = verify(f.pg.url)
    result.verify = text
    result.check(clean, f"gpucap ledger verify: {text}")


def kill_ledger() -> Result:
    result = Result("kill-ledger")
    with workdir("kill-ledger") as root, fleet(root) as f:
        a, b = f.ledgers
        on_a = [ag for ag in f.agents if ag.ledger_url == f.proxy.url]
        on_b = [ag.spec.node for ag in f.agents if ag.ledger_url == b.url]
        time.sleep(RUN_S)
        # Kill ledger-a once it has committed a report whose `accepted` has not reached the agent.
        with f.proxy.lock:
            f.proxy.withheld.clear()
            f.proxy.hold.set()
        wait_for(lambda: _ACCEPTED.search(b"".join(f.proxy.withheld)) is not None, "a commit", 30)
        a.kill9()
        f.proxy.hold.clear()
        held = {int(m) for m in _ACCEPTED.findall(b"".join(f.proxy.withheld))}
        killed_at = time.monotonic()
        before = f.last_seqs(b)
        time.sleep(3.0)  # ledger-a's agents retry against a dead port meanwhile
        during = f.last_seqs(b)
        result.check(
            all(during[n] > before[n] for n in on_b),
            "ledger-b's agents did not advance while ledger-a was down",
        )
        restarted_wall = time.time()
        ready_s = a.start_ready()
        recovery_s = recovered(on_a, restarted_wall)
        result.recovery_s = (
            f"{recovery_s:.2f} s from restart to a report accepted from each of ledger-a's "
            f"agents (ready after {ready_s:.2f} s; {time.monotonic() - killed_at:.2f} s after "
            "the kill)"
        )
        time.sleep(RUN_S)
        _finish(result, f, a)
        resent = {seq for ag in on_a for seq, how in ag.acks() if how == "duplicate"}
        result.check(
            held <= resent,
            f"reports {sorted(held)} committed before the kill, resends answered duplicate: "
            f"{sorted(resent)}",
        )
        result.did = (
            f"2 ledgers on a private PostgreSQL, {len(f.agents)} agents (0.2 s interval); "
            f"kill -9 of ledger-a after it committed {len(held)} report(s) whose answers were "
            "held back, 3 s down, restarted on its port"
        )
        failed = sum(len(ag.failures()) for ag in f.agents)
        result.notes.append(f"{failed} failed sends retried by ledger-a's agents")
    return result


def pg_restart() -> Result:
    result = Result("pg-restart")
    with workdir("pg-restart") as root, fleet(root) as f:
        time.sleep(RUN_S)
        f.pg.stop("immediate")
        down_at = time.monotonic()
        probes: dict[str, set[int]] = {"readyz": set(), "healthz": set(), "nodes": set()}
        while time.monotonic() - down_at < 3.0:
            for ledger in f.ledgers:
                for path, key in (("/readyz", "readyz"), ("/healthz", "healthz")):
                    try:
                        probes[key].add(httpx.get(ledger.url + path, timeout=5).status_code)
                    except httpx.HTTPError as exc:
                        result.failures.append(f"{ledger.name}{path} while down: {exc!r}")
                try:
                    headers = {"Authorization": f"Bearer {f.operator}"}
                    got = httpx.get(f"{ledger.url}/v1/nodes", headers=headers, timeout=10)
                    probes["nodes"].add(got.status_code)
                except httpx.HTTPError as exc:
                    result.failures.append(f"{ledger.name}/v1/nodes while down: {exc!r}")
            time.sleep(0.2)
        result.check(probes["readyz"] == {503}, f"/readyz while down: {sorted(probes['readyz'])}")
        result.check(
            probes["healthz"] == {200}, f"/healthz while down: {sorted(probes['healthz'])}"
        )
        result.check(probes["nodes"] == {503}, f"/v1/nodes while down: {sorted(probes['nodes'])}")
        started, started_wall = time.monotonic(), time.time()
        f.pg.start()
        up_s = time.monotonic() - started
        recovery_s = recovered(f.agents, started_wall)
        ready = all(answers(ledger.url + "/readyz") for ledger in f.ledgers)
        result.check(ready, "a ledger not ready after the database came back")
        result.check(all(ledger.alive() for ledger in f.ledgers), "a ledger process exited")
        result.recovery_s = (
            f"{recovery_s:.2f} s from `pg_ctl start` to a report accepted from every agent "
            f"(the cluster took {up_s:.2f} s to start; ledgers not restarted)"
        )
        time.sleep(RUN_S)
        _finish(result, f, f.ledgers[1])
        unavailable = sum(1 for ag in f.agents for _, why in ag.failures() if "503" in why)
        result.did = (
            f"2 ledgers on a private PostgreSQL, {len(f.agents)} agents (0.2 s interval); "
            "`pg_ctl stop -m immediate`, 3 s down, `pg_ctl start`"
        )
        result.notes.append(
            f"while down: /readyz {sorted(probes['readyz'])}, /healthz {sorted(probes['healthz'])}"
            f", /v1/nodes {sorted(probes['nodes'])}; {unavailable} agent sends answered 503"
        )
    return result
