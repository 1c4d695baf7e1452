"""The operators' records: `gpucap ledger nodes`, `token --list`, `decommission --reason` and
`--dry-run`, on both databases, through the real CLI and a real server."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from gpucap.cli import main
from gpucap.core.errors import InputError
from gpucap.ledger import ingest, listings, tokens
from gpucap.ledger.errors import RejectedError
from gpucap.ledger.models import Report
from gpucap.ledger.service import Ledger
from gpucap.ledger.tables import table
from tests.ledger.support import Clock, gpucap, ledger_server, record_registry, report

NODE_KEYS = {
    "node",
    "site",
    "last_seq",
    "first_seen",
    "last_seen",
    "stale",
    "state",
    "decommissioned_on",
    "agent_version",
    "devices",
}
EVERYONE = tokens.Principal(token_id="t", kind="operator", operator="root")


def _ingest(led: Ledger, node: str, site: str, seq: int, n: int) -> None:
    body = report(node=node, site=site, seq=seq, n=n)
    assert led.ingest(Report.model_validate_json(json.dumps(body))).status == "accepted"


def _fleet(led: Ledger, clock: Clock) -> None:
    """n1 at acme-ae-1 with 6 of its 8 devices left, n2 at acme-us-1 decommissioned, n3 at
    nimbus-ae-1 with 2 devices."""
    _ingest(led, "n1", "acme-ae-1", 1, 8)
    _ingest(led, "n2", "acme-us-1", 1, 4)
    _ingest(led, "n3", "nimbus-ae-1", 1, 2)
    _ingest(led, "n1", "acme-ae-1", 2, 6)
    ingest.decommission(led.store, "n2", clock(), "operator:test")


def _snapshot(db_url: str) -> tuple[int, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(log size, device rows, node rows): what a dry run must leave as it is."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            size = conn.execute(sa.text("SELECT count(*) FROM log_entry")).scalar_one()
            devices = [
                tuple(r)
                for r in conn.execute(sa.text("SELECT * FROM device ORDER BY node_id, uuid"))
            ]
            nodes = [tuple(r) for r in conn.execute(sa.text("SELECT * FROM node ORDER BY node_id"))]
    finally:
        engine.dispose()
    return int(size), devices, nodes


def _decommission_bodies(db_url: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            leaves = conn.execute(
                sa.text("SELECT leaf FROM log_entry WHERE kind = 'decommission' ORDER BY id")
            ).scalars()
            return [json.loads(leaf)["body"] for leaf in leaves]
    finally:
        engine.dispose()


# -- GET /v1/nodes: state and present devices -------------------------------------------------
def test_nodes_have_a_state_and_their_present_devices(ledger: Ledger, clock: Clock) -> None:
    _fleet(ledger, clock)
    by_node = {n["node"]: n for n in ledger.nodes(EVERYONE, None)["nodes"]}
    assert all(set(n) == NODE_KEYS for n in by_node.values())
    assert {k: (n["state"], n["devices"]) for k, n in by_node.items()} == {
        "n1": ("fresh", 6),
        "n2": ("decommissioned", 0),
        "n3": ("fresh", 2),
    }
    assert by_node["n1"]["stale"] is False
    assert by_node["n1"]["last_seq"] == 2


def test_a_silent_node_turns_stale_with_the_clock(ledger: Ledger, clock: Clock) -> None:
    _fleet(ledger, clock)
    stale_after = timedelta(seconds=ledger.settings.stale_after_s)
    clock.moment += stale_after  # exactly at the threshold: still fresh
    states = {n["node"]: n["state"] for n in ledger.nodes(EVERYONE, None)["nodes"]}
    assert states == {"n1": "fresh", "n2": "decommissioned", "n3": "fresh"}
    clock.moment += timedelta(seconds=1)
    answer = ledger.nodes(EVERYONE, None)["nodes"]
    assert {n["node"]: n["state"] for n in answer} == {
        "n1": "stale",
        "n2": "decommissioned",
        "n3": "stale",
    }
    assert all(n["stale"] is (n["state"] == "stale") for n in answer)
    _ingest(ledger, "n1", "acme-ae-1", 3, 6)  # a heartbeat makes it fresh again
    by_node = {n["node"]: n for n in ledger.nodes(EVERYONE, None)["nodes"]}
    assert (by_node["n1"]["state"], by_node["n1"]["devices"]) == ("fresh", 6)


def test_nodes_are_limited_to_a_site_and_to_an_entity(ledger: Ledger, clock: Clock) -> None:
    _fleet(ledger, clock)
    one = ledger.nodes(EVERYONE, "nimbus-ae-1")
    assert [(n["node"], n["devices"]) for n in one["nodes"]] == [("n3", 2)]
    acme = tokens.Principal(token_id="t", kind="operator", operator="ops", entity="acme")
    assert [n["node"] for n in ledger.nodes(acme, None)["nodes"]] == ["n1", "n2"]


def test_device_counts_are_one_grouped_query_whatever_the_nodes(
    ledger: Ledger, clock: Clock
) -> None:
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    def asked() -> int:
        statements.clear()
        sa.event.listen(ledger.store.read_engine, "before_cursor_execute", count)
        try:
            ledger.nodes(EVERYONE, None)
        finally:
            sa.event.remove(ledger.store.read_engine, "before_cursor_execute", count)
        return len(statements)

    _ingest(ledger, "n1", "acme-ae-1", 1, 8)
    ledger.nodes(EVERYONE, None)  # the registry is read and cached once
    few = asked()
    for i in range(2, 12):
        _ingest(ledger, f"n{i}", "acme-ae-1", 1, 2)
    assert asked() == few
    assert sum("GROUP BY" in s for s in statements) == 1


# -- listings: the pure renderings ------------------------------------------------------------
def test_render_prints_names_as_they_are_and_quotes_csv() -> None:
    rows = [{"node": "[bold]n1", "site": "a,b", "last_seen": None, "last_seq": 3}]
    text = listings.render(rows, listings.NODE_COLUMNS, "table")
    assert "[bold]n1" in text
    heading = "node site last seen last seq state devices"
    assert text.splitlines()[0].split() == heading.split()
    parsed = list(csv.reader(io.StringIO(listings.render(rows, listings.NODE_COLUMNS, "csv"))))
    assert parsed == [
        ["node", "site", "last_seen", "last_seq", "state", "devices"],
        ["[bold]n1", "a,b", "", "3", "", ""],
    ]
    assert json.loads(listings.render(rows, listings.NODE_COLUMNS, "json")) == rows


def test_node_rows_of_an_answer_without_state_or_devices() -> None:
    old = {
        "nodes": [
            {"node": "a", "site": "s", "last_seq": 1, "last_seen": "t", "stale": True},
            {"node": "b", "site": "s", "last_seq": 1, "last_seen": "t", "stale": False},
            {"node": "c", "stale": False, "decommissioned_on": "2025-09-01"},
        ]
    }
    rows = listings.node_rows(old)
    assert [(r["state"], r["devices"]) for r in rows] == [
        ("stale", None),
        ("fresh", None),
        ("decommissioned", None),
    ]


# -- gpucap ledger nodes ----------------------------------------------------------------------
def test_nodes_command_from_the_database(ledger: Ledger, clock: Clock, db_url: str) -> None:
    _fleet(ledger, clock)
    proc = gpucap("ledger", "nodes", "--db", db_url, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["nodes_total"] == 3
    # The command's clock is the real one: the fixture's reports are long past.
    assert [(n["node"], n["state"], n["devices"]) for n in doc["nodes"]] == [
        ("n1", "stale", 6),
        ("n2", "decommissioned", 0),
        ("n3", "stale", 2),
    ]
    assert all(set(n) == NODE_KEYS for n in doc["nodes"])

    proc = gpucap("ledger", "nodes", "--db", db_url, "--format", "csv", "--site", "acme-ae-1")
    assert proc.returncode == 0, proc.stderr
    parsed = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [list(r) for r in parsed] == [
        ["node", "site", "last_seen", "last_seq", "state", "devices"]
    ]
    assert parsed == [
        {
            "node": "n1",
            "site": "acme-ae-1",
            "last_seen": doc["nodes"][0]["last_seen"],
            "last_seq": "2",
            "state": "stale",
            "devices": "6",
        }
    ]

    table_ = gpucap("ledger", "nodes", "--db", db_url)
    assert table_.returncode == 0, table_.stderr
    lines = table_.stdout.splitlines()
    assert lines[0].split() == ["node", "site", "last", "seen", "last", "seq", "state", "devices"]
    assert [ln.split()[0] for ln in lines[2:]] == ["n1", "n2", "n3"]
    assert lines[3].split()[-2:] == ["decommissioned", "0"]


def test_nodes_command_refuses_bad_flags(ledger: Ledger, db_url: str) -> None:
    unknown = gpucap("ledger", "nodes", "--db", db_url, "--site", "nowhere")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("gpucap: error: ")
    assert "'nowhere'" in unknown.stderr
    both = gpucap("ledger", "nodes", "--db", db_url, "--ledger", "http://127.0.0.1:1")
    assert both.returncode == 2
    assert both.stderr.startswith("gpucap: error: --ledger: ")
    no_token = gpucap("ledger", "nodes", "--ledger", "http://127.0.0.1:1", env={"GPUCAP_TOKEN": ""})
    assert no_token.returncode == 2
    assert no_token.stderr.startswith("gpucap: error: GPUCAP_TOKEN: ")
    bad_url = gpucap("ledger", "nodes", "--ledger", "notaurl", env={"GPUCAP_TOKEN": "gpc1.x.y"})
    assert bad_url.returncode == 2
    assert bad_url.stderr.startswith("gpucap: error: --ledger: ")
    unreachable = gpucap(
        "ledger", "nodes", "--ledger", "http://127.0.0.1:1", env={"GPUCAP_TOKEN": "gpc1.x.y"}
    )
    assert unreachable.returncode == 3


@pytest.mark.slow
def test_nodes_command_from_a_ledger_equals_the_database(db_url: str, registry_file: Path) -> None:
    record_registry(db_url, registry_file)
    node_token = gpucap("ledger", "token", "--db", db_url, "--node", "n1", "--site", "acme-ae-1")
    admin = gpucap("ledger", "token", "--db", db_url, "--operator", "root").stdout.strip()
    nimbus = gpucap(
        "ledger", "token", "--db", db_url, "--operator", "ops", "--entity", "nimbus"
    ).stdout.strip()
    with ledger_server(db_url, registry_file) as url:
        r = httpx.post(
            f"{url}/v1/reports",
            json=report(seq=1, n=5),
            headers={"Authorization": f"Bearer {node_token.stdout.strip()}"},
        )
        assert r.json()["status"] == "accepted", r.text
        remote = gpucap(
            "ledger", "nodes", "--ledger", url, "--format", "json", env={"GPUCAP_TOKEN": admin}
        )
        local = gpucap("ledger", "nodes", "--db", db_url, "--format", "json")
        assert remote.returncode == 0, remote.stderr
        assert local.returncode == 0, local.stderr
        doc = json.loads(remote.stdout)
        assert doc == json.loads(local.stdout)
        assert [(n["node"], n["state"], n["devices"]) for n in doc["nodes"]] == [("n1", "fresh", 5)]
        csv_ = gpucap(
            "ledger", "nodes", "--ledger", url, "--format", "csv", env={"GPUCAP_TOKEN": admin}
        )
        assert csv_.stdout.splitlines()[0] == "node,site,last_seen,last_seq,state,devices"
        assert csv_.stdout.splitlines()[1].endswith(",1,fresh,5")
        scoped = gpucap(
            "ledger", "nodes", "--ledger", url, "--format", "json", env={"GPUCAP_TOKEN": nimbus}
        )
        assert json.loads(scoped.stdout)["nodes"] == []
        refused = gpucap(
            "ledger", "nodes", "--ledger", url, "--site", "acme-ae-1", env={"GPUCAP_TOKEN": nimbus}
        )
        assert refused.returncode == 3
        assert "403" in refused.stderr


# -- gpucap ledger token --list ---------------------------------------------------------------
def test_token_list_names_who_issued_and_revoked_never_a_secret(
    db_url: str, registry_file: Path
) -> None:
    record_registry(db_url, registry_file)
    issued = [
        gpucap(
            "ledger",
            "token",
            "--db",
            db_url,
            "--operator",
            "alice",
            "--entity",
            "acme",
            "--by",
            "bob",
        ),
        gpucap("ledger", "token", "--db", db_url, "--node", "n1", "--site", "acme-ae-1"),
        gpucap("ledger", "token", "--db", db_url, "--auditor", "carol", "--by", "dora"),
    ]
    assert all(p.returncode == 0 for p in issued), [p.stderr for p in issued]
    secrets = [p.stdout.strip() for p in issued]
    ids = [p.stderr.split()[-1] for p in issued]
    revoked = gpucap("ledger", "token", "--db", db_url, "--revoke", ids[1], "--by", "erin")
    assert revoked.returncode == 0, revoked.stderr

    outputs = {
        fmt: gpucap("ledger", "token", "--list", "--db", db_url, "--format", fmt)
        for fmt in ("table", "json", "csv")
    }
    assert all(p.returncode == 0 for p in outputs.values()), [p.stderr for p in outputs.values()]
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            hashes = list(conn.execute(sa.text("SELECT token_sha256 FROM token")).scalars())
    finally:
        engine.dispose()
    for proc in outputs.values():
        for secret in [*secrets, *hashes, *(s.split(".")[2] for s in secrets)]:
            assert secret not in proc.stdout

    doc = json.loads(outputs["json"].stdout)
    rows = {t["id"]: t for t in doc["tokens"]}
    assert list(rows) == ids  # oldest first
    assert rows[ids[0]] == {
        "id": ids[0],
        "kind": "operator",
        "subject": {"operator": "alice"},
        "scope": "acme",
        "issued_at": rows[ids[0]]["issued_at"],
        "by": "bob",
        "revoked_at": None,
        "expires_at": None,
        "label": None,
    }
    assert rows[ids[1]]["subject"] == {"node": "n1", "site": "acme-ae-1"}
    assert (rows[ids[1]]["by"], rows[ids[1]]["scope"]) == ("cli", None)
    assert rows[ids[1]]["revoked_at"] > rows[ids[1]]["issued_at"]
    assert (rows[ids[2]]["kind"], rows[ids[2]]["subject"], rows[ids[2]]["by"]) == (
        "auditor",
        {"auditor": "carol"},
        "dora",
    )

    parsed = list(csv.reader(io.StringIO(outputs["csv"].stdout)))
    assert parsed[0] == [
        "id",
        "kind",
        "subject",
        "scope",
        "issued_at",
        "by",
        "revoked_at",
        "expires_at",
        "label",
    ]
    assert parsed[1] == [
        ids[0],
        "operator",
        "operator:alice",
        "acme",
        rows[ids[0]]["issued_at"],
        "bob",
        "",
        "",
        "",
    ]
    assert parsed[2][2] == "node:n1 site:acme-ae-1"
    assert parsed[2][6] == rows[ids[1]]["revoked_at"]

    lines = outputs["table"].stdout.splitlines()
    assert lines[0].split() == [
        "id",
        "kind",
        "subject",
        "scope",
        "issued",
        "at",
        "by",
        "revoked",
        "at",
        "expires",
        "at",
        "label",
    ]
    assert [ln.split()[0] for ln in lines[2:]] == ids
    # Listing appends nothing to the log (the registry, three issues and a revocation).
    assert _snapshot(db_url)[0] == 5


@pytest.mark.parametrize(
    "flags",
    [
        ["--revoke", "abc"],
        ["--node", "n1", "--site", "acme-ae-1"],
        ["--operator", "alice"],
        ["--entity", "acme"],
        ["--auditor", "carol"],
        ["--by", "bob"],
    ],
    ids=lambda f: f[0],
)
def test_token_list_with_an_issuing_or_revoking_flag_is_a_usage_error(
    flags: list[str], tmp_path: Path
) -> None:
    # Refused before the database is opened: exit 2 even where there is none.
    proc = gpucap("ledger", "token", "--list", *flags, "--db", f"sqlite:///{tmp_path / 'x.db'}")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"gpucap: error: {flags[0]}: --list issues and revokes nothing: give it alone"
    ]
    assert list(tmp_path.iterdir()) == []


def test_token_format_without_list_is_a_usage_error(tmp_path: Path) -> None:
    proc = gpucap(
        "ledger",
        "token",
        "--operator",
        "a",
        "--format",
        "csv",
        "--db",
        f"sqlite:///{tmp_path / 'x.db'}",
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["gpucap: error: --format: only with --list"]


# -- gpucap ledger decommission --reason / --dry-run ------------------------------------------
def test_decommission_dry_run_changes_nothing_and_refuses_what_the_real_one_does(
    ledger: Ledger, db_url: str
) -> None:
    _ingest(ledger, "n1", "acme-ae-1", 1, 8)
    _ingest(ledger, "n1", "acme-ae-1", 2, 6)  # 2 of its devices already gone
    before = _snapshot(db_url)
    dry = gpucap("ledger", "decommission", "--db", db_url, "--node", "n1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == (
        "node n1 would be decommissioned; 6 devices would be closed; 0 tokens would be revoked\n"
    )
    assert _snapshot(db_url) == before
    with_reason = gpucap(
        "ledger", "decommission", "--db", db_url, "--node", "n1", "--dry-run", "--reason", "rma"
    )
    assert with_reason.returncode == 0, with_reason.stderr
    assert _snapshot(db_url) == before

    for node in ("n9", "n1"):
        if node == "n1":  # now decommission it for real, and ask again
            real = gpucap("ledger", "decommission", "--db", db_url, "--node", "n1")
            assert real.stdout == "node n1 decommissioned; 6 devices closed; 0 tokens revoked\n"
        after = _snapshot(db_url)
        dry = gpucap("ledger", "decommission", "--db", db_url, "--node", node, "--dry-run")
        wet = gpucap("ledger", "decommission", "--db", db_url, "--node", node)
        assert dry.returncode == wet.returncode == 2
        assert dry.stderr == wet.stderr
        assert ("already" in dry.stderr) is (node == "n1")
        assert dry.stdout == ""
        assert _snapshot(db_url) == after


def test_decommission_reason_is_in_the_entry_only_when_given(ledger: Ledger, db_url: str) -> None:
    _ingest(ledger, "n1", "acme-ae-1", 1, 8)
    _ingest(ledger, "n2", "acme-ae-1", 1, 2)
    reason = "returned to vendor\tRMA 1234\nsecond line, ünïcode"
    proc = gpucap(
        "ledger",
        "decommission",
        "--db",
        db_url,
        "--node",
        "n1",
        "--reason",
        reason,
        "--by",
        "alice",
    )
    assert proc.returncode == 0, proc.stderr
    assert gpucap("ledger", "decommission", "--db", db_url, "--node", "n2").returncode == 0
    first, second = _decommission_bodies(db_url)
    assert first == {"node_id": "n1", "on": first["on"], "reason": reason}
    assert set(second) == {"node_id", "on"}
    # Entries with and without a reason replay into the same projections.
    verified = gpucap("ledger", "verify", "--db", db_url, "--projections")
    assert verified.returncode == 0, verified.stderr
    assert gpucap("ledger", "rebuild", "--db", db_url).returncode == 0
    states = {n["node"]: n["state"] for n in ledger.nodes(EVERYONE, None)["nodes"]}
    assert states == {"n1": "decommissioned", "n2": "decommissioned"}


@pytest.mark.parametrize(
    ("reason", "why"),
    [
        ("a\x00b", "control character U+0000 at position 1"),
        ("bell\x07", "control character U+0007 at position 4"),
        ("cr\r\n", "control character U+000D at position 2"),
        ("\x1b[31mred", "control character U+001B at position 0"),
        ("bad \udcff byte", "not UTF-8 at position 4"),
        ("", "must not be empty"),
        (" \n", "must not be empty"),
    ],
)
def test_decommission_refuses_a_reason_with_control_characters(
    ledger: Ledger,
    db_url: str,
    reason: str,
    why: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _ingest(ledger, "n1", "acme-ae-1", 1, 8)
    before = _snapshot(db_url)
    for dry in ([], ["--dry-run"]):
        argv = ["ledger", "decommission", "--db", db_url, "--node", "n1", "--reason", reason, *dry]
        assert main(argv) == 2  # in process: argv cannot carry a NUL to a subprocess
        assert capsys.readouterr().err == f"gpucap: error: --reason: {why}\n"
    with pytest.raises(InputError, match="--reason"):
        ingest.decommission(ledger.store, "n1", ledger.now(), "operator:test", reason)
    assert _snapshot(db_url) == before


def test_decommission_keeps_no_reason_key_for_none(ledger: Ledger, clock: Clock) -> None:
    _ingest(ledger, "n1", "acme-ae-1", 1, 3)
    assert ingest.decommission_preview(ledger.store, "n1", clock()) == (3, 0)
    assert ingest.decommission(ledger.store, "n1", clock(), "operator:test", None) == (3, 0)
    log_t = table("log_entry")
    with ledger.store.read() as conn:
        leaf = conn.execute(
            sa.select(log_t.c.leaf).where(log_t.c.kind == "decommission")
        ).scalar_one()
    assert json.loads(leaf)["body"] == {"node_id": "n1", "on": "2025-09-01"}
    with pytest.raises(RejectedError, match="decommissioned already"):
        ingest.decommission_preview(ledger.store, "n1", clock())
