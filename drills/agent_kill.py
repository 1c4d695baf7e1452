"""`kill-agent`: kill -9 an agent while it delivers, restart it on the same spool.

The agent talks to the ledger through a loopback proxy that can hold the ledger's answers back.
Each round the proxy holds them, the agent sends its next report, the ledger commits it and
answers `accepted`, and the agent is killed while it waits for that answer: the worst moment,
stored but not acknowledged. Restarted on the same spool, it must send that report again and
be answered `duplicate`, and the ledger must hold every report once.
"""

from __future__ import annotations

import time

from drills.common import (
    REGISTRY,
    AgentProc,
    AgentSpec,
    LedgerProc,
    Result,
    issue_token,
    recovered,
    verify,
    wait_for,
    workdir,
)
from drills.ledgered import compare, fill
from drills.proxy import HoldingProxy

ROUNDS = 3


def kill_agent() -> Result:
    result = Result("kill-agent")
    spec = AgentSpec("n1", "acme-us-1", "hot-unplug")
    with workdir("kill-agent") as root:
        registry = root / "registry.yaml"
        registry.write_text(REGISTRY, encoding="utf-8")
        db_url = f"sqlite:///{root / 'ledger.db'}"
        ledger = LedgerProc("ledger", root, db_url, registry, {})
        ledger.start_ready()
        proxy = HoldingProxy(ledger.port)
        agent = AgentProc(
            spec, root, proxy.url, issue_token(db_url, "--node", "n1", "--site", spec.site)
        )
        operator = issue_token(db_url, "--operator", "drill")
        recoveries: list[float] = []
        try:
            agent.start()
            wait_for(lambda: len(agent.acks()) >= 5, "the agent's first reports", 60)
            for _ in range(ROUNDS):
                recoveries.append(_round(result, agent, proxy))
            time.sleep(1.0)
            code = agent.stop()
            result.check(code == 0, f"agent exited {code} on SIGTERM:\n{agent.tail()}")
            fill(result, compare([agent], ledger.url, operator, db_url), 1)
        finally:
            agent.stop()
            proxy.close()
            ledger.stop()
        clean, text = verify(db_url)
        result.verify = text
        result.check(clean, f"gpucap ledger verify: {text}")
    result.did = (
        f"1 agent (0.2 s interval) through a proxy to a ledger on SQLite; {ROUNDS} times: the "
        "ledger's `accepted` held back, kill -9 of the agent while it waits, restart on its spool"
    )
    result.recovery_s = "from restart to the first acknowledgement: " + ", ".join(
        f"{r:.2f} s" for r in recoveries
    )
    result.notes.append(f"{ROUNDS} sends cut off by the kill (not in `sent`)")
    return result


def _round(result: Result, agent: AgentProc, proxy: HoldingProxy) -> float:
    """One kill while a committed report's answer is held back; the restart's recovery time."""
    with proxy.lock:
        seen = len(proxy.seqs)
        proxy.withheld.clear()
        proxy.hold.set()
    wait_for(lambda: len(proxy.seqs) > seen, "a send while answers are held", 30)
    wait_for(lambda: any(b"accepted" in w for w in proxy.withheld), "the ledger's answer", 30)
    held_seq = proxy.seqs[-1]
    agent.kill9()
    proxy.hold.clear()
    restarted = time.time()
    agent.start()
    recovery = recovered([agent], restarted)
    wait_for(lambda: (held_seq, "duplicate") in agent.acks(), f"report {held_seq} resent", 30)
    resent = [how for seq, how in agent.acks() if seq == held_seq]
    result.check(
        resent == ["duplicate"],
        f"report {held_seq}, stored before the kill, was acknowledged {resent} after it",
    )
    time.sleep(1.0)  # reports flow again before the next round
    return recovery
