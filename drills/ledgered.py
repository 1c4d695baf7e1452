"""The end of every delivery drill: what the agents were told against what the ledger holds."""

from __future__ import annotations

from dataclasses import dataclass, field

from drills.common import AgentProc, Result, expected_devices, nodes, report_entries


@dataclass
class Ledgered:
    """The comparison of the agents' acknowledgements with the ledger's record."""

    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    changes_acked: int = 0
    changes_stored: int = 0
    nodes_matched: int = 0
    counted_twice: int = 0
    failures: list[str] = field(default_factory=list)


def compare(agents: list[AgentProc], url: str, operator: str, db_url: str) -> Ledgered:
    """Nothing acknowledged lost (each node's last seq at the ledger is at least its last
    acknowledged one, and each acknowledged change report is a log entry), nothing counted
    twice (no (node, seq) logged twice, each node's device count that of its fake machine)."""
    out = Ledgered()
    listed = nodes(url, operator)
    entries = report_entries(db_url)
    for (node, seq), n in _counts(entries).items():
        if n > 1:
            out.counted_twice += 1
            out.failures.append(f"report {seq} of {node} is in the log {n} times")
    logged = set(entries)
    for agent in agents:
        acks = agent.acks()
        out.sent += len(acks) + len(agent.failures())
        out.accepted += sum(1 for _, how in acks if how == "accepted")
        out.duplicates += sum(1 for _, how in acks if how == "duplicate")
        node = agent.spec.node
        row = listed.get(node)
        if not acks:
            out.failures.append(f"{node}: no report acknowledged at all")
            continue
        if row is None:
            out.failures.append(f"{node}: acknowledged {len(acks)} reports, unknown to the ledger")
            continue
        top = max(seq for seq, _ in acks)
        if row["last_seq"] < top:
            out.failures.append(f"{node}: last seq {row['last_seq']} < acknowledged {top}")
        changed = {seq for seq, how in acks if how == "accepted"} & agent.changes()
        out.changes_acked += len(changed)
        stored = {seq for n, seq in logged if n == node}
        out.changes_stored += len(changed & stored)
        missing = sorted(changed - stored)
        if missing:
            out.failures.append(f"{node}: acknowledged change reports not in the log: {missing}")
        want = expected_devices(agent.spec.fake)
        if row["devices"] != want:
            out.failures.append(f"{node}: {row['devices']} devices at the ledger, {want} on it")
        elif row["last_seq"] >= top:
            out.nodes_matched += 1
    return out


def _counts(items: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    counted: dict[tuple[str, int], int] = {}
    for item in items:
        counted[item] = counted.get(item, 0) + 1
    return counted


def fill(result: Result, ledgered: Ledgered, agents: int) -> None:
    """Write the comparison into the result block."""
    result.sent = f"{ledgered.sent} report sends by {agents} agents"
    result.acknowledged = (
        f"{ledgered.accepted + ledgered.duplicates} "
        f"({ledgered.accepted} accepted, {ledgered.duplicates} duplicate)"
    )
    result.stored = (
        f"{ledgered.nodes_matched}/{agents} nodes: last seq >= last acknowledged, device count "
        f"= the fake machine's; {ledgered.changes_stored}/{ledgered.changes_acked} acknowledged "
        "change reports in the log"
    )
    result.duplicates = (
        f"{ledgered.duplicates} resends answered duplicate; {ledgered.counted_twice} reports "
        "logged twice"
    )
    result.failures.extend(ledgered.failures)
