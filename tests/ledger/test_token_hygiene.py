"""Token hygiene: `gpucap ledger token` refuses subjects the registry and the node table do not
allow, tokens expire (`--expires`) and carry a label (`--label`), a decommission revokes its
node's tokens, and the 0004 migration keeps existing tokens working. On both databases."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command

from gpucap.cli import main
from gpucap.core.errors import InputError
from gpucap.ledger import ingest, tokens
from gpucap.ledger.errors import AuthError
from gpucap.ledger.models import Report
from gpucap.ledger.service import Ledger
from gpucap.ledger.settings import Settings, iso_instant, utc_now
from gpucap.ledger.store import Store, _alembic_config
from tests.ledger.support import Clock, gpucap, ledger_server, record_registry, report

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _ingest(led: Ledger, node: str, site: str, seq: int = 1, n: int = 2) -> None:
    body = report(node=node, site=site, seq=seq, n=n)
    assert led.ingest(Report.model_validate_json(json.dumps(body))).status == "accepted"


def _rows(db_url: str, query: str) -> list[Any]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(query))]
    finally:
        engine.dispose()


def _written(db_url: str) -> tuple[list[Any], list[Any]]:
    """(token rows, log entries): what a refused command must leave as it is."""
    return (
        _rows(db_url, "SELECT * FROM token ORDER BY id"),
        _rows(db_url, "SELECT id, kind, leaf FROM log_entry ORDER BY id"),
    )


def _entries(db_url: str, kind: str) -> list[dict[str, Any]]:
    query = f"SELECT leaf FROM log_entry WHERE kind = '{kind}' ORDER BY id"  # noqa: S608 (test)
    return [json.loads(r[0]) for r in _rows(db_url, query)]


def _token(capsys: pytest.CaptureFixture[str], db_url: str, *flags: str) -> tuple[int, str, str]:
    """`gpucap ledger token` in process: (exit code, stdout, stderr)."""
    code = main(["ledger", "token", "--db", db_url, *flags])
    out = capsys.readouterr()
    return code, out.out, out.err


# -- refusals ---------------------------------------------------------------------------------
REFUSALS = [
    (
        ["--node", "n7", "--site", "nowhere"],
        "--site: no site 'nowhere' in the registry",
    ),
    (
        ["--operator", "ops", "--entity", "nobody"],
        "--entity: no entity 'nobody' in the registry",
    ),
    (
        ["--node", "n1", "--site", "acme-us-1"],
        "--node: node 'n1' reports for site 'acme-ae-1'",
    ),
    (
        ["--node", "n2", "--site", "acme-ae-1"],
        "--node: node 'n2' was decommissioned on 2025-09-01; a node id is never reused: "
        "enrol the machine under a new node id",
    ),
]


@pytest.mark.parametrize(("flags", "message"), REFUSALS, ids=lambda v: str(v)[:40])
def test_token_refuses_what_the_registry_and_nodes_do_not_allow(
    ledger: Ledger,
    clock: Clock,
    db_url: str,
    flags: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _ingest(ledger, "n1", "acme-ae-1")
    _ingest(ledger, "n2", "acme-ae-1")
    ingest.decommission(ledger.store, "n2", clock(), "operator:test")
    before = _written(db_url)
    code, out, err = _token(capsys, db_url, *flags)
    assert (code, out) == (2, "")
    assert err == f"gpucap: error: {message}\n"
    assert _written(db_url) == before


def test_token_for_a_node_that_has_not_reported_yet_is_issued(
    ledger: Ledger, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _ingest(ledger, "n1", "acme-ae-1")
    for flags in (
        ["--node", "new-node", "--site", "nimbus-ae-1"],  # not reported yet: fine
        ["--node", "n1", "--site", "acme-ae-1"],  # its own site: fine
        ["--operator", "ops", "--entity", "nimbus"],
    ):
        code, out, err = _token(capsys, db_url, *flags)
        assert code == 0, err
        assert out.startswith("gpc1.")


def test_without_a_registry_node_and_entity_tokens_are_refused(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ledger", "migrate", "--db", db_url]) == 0
    capsys.readouterr()
    before = _written(db_url)
    for flags, flag in (
        (["--node", "n1", "--site", "acme-ae-1"], "--site"),
        (["--operator", "ops", "--entity", "acme"], "--entity"),
    ):
        code, _out, err = _token(capsys, db_url, *flags)
        assert code == 2
        assert err == (
            f"gpucap: error: {flag}: no registry loaded (gpucap ledger serve --registry FILE)\n"
        )
    assert _written(db_url) == before
    # Tokens that name nothing in the registry need none.
    for flags in (["--operator", "root"], ["--auditor", "kpmg"]):
        code, _out, err = _token(capsys, db_url, *flags)
        assert code == 0, err


def test_refusals_through_the_real_command(db_url: str, registry_file: Path) -> None:
    record_registry(db_url, registry_file)
    before = _written(db_url)
    proc = gpucap("ledger", "token", "--db", db_url, "--node", "n1", "--site", "mars-1")
    assert proc.returncode == 2
    assert proc.stderr == "gpucap: error: --site: no site 'mars-1' in the registry\n"
    assert proc.stdout == ""
    assert _written(db_url) == before


# -- --expires --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", NOW + timedelta(days=90)),
        ("12h", NOW + timedelta(hours=12)),
        ("30m", NOW + timedelta(minutes=30)),
        ("45s", NOW + timedelta(seconds=45)),
        ("2w", NOW + timedelta(weeks=2)),
        ("2027-01-01T00:00:00Z", datetime(2027, 1, 1, tzinfo=UTC)),
        ("2027-01-01t00:00:00z", datetime(2027, 1, 1, tzinfo=UTC)),
        ("2027-01-01 02:00:00.5+02:00", datetime(2027, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
        ("2026-03-01T12:00:00.000001Z", NOW + timedelta(microseconds=1)),
    ],
)
def test_expires_parses_instants_and_durations(text: str, expected: datetime) -> None:
    parsed = tokens.parse_expires(text, NOW)
    assert parsed == expected
    assert parsed.tzinfo == UTC


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "is neither an RFC 3339 instant"),
        ("90", "is neither an RFC 3339 instant"),
        ("0d", "is neither an RFC 3339 instant"),
        ("-1d", "is neither an RFC 3339 instant"),
        ("1y", "is neither an RFC 3339 instant"),
        ("1.5h", "is neither an RFC 3339 instant"),
        ("2027-01-01", "is neither an RFC 3339 instant"),
        ("2027-01-01T00:00:00", "is neither an RFC 3339 instant"),  # no offset
        ("2027-02-30T00:00:00Z", "is not a valid instant"),
        ("9999999999w", "is not a valid instant"),
        ("2026-03-01T12:00:00Z", "2026-03-01T12:00:00.000000Z is not in the future"),
        ("2020-01-01T00:00:00Z", "2020-01-01T00:00:00.000000Z is not in the future"),
    ],
)
def test_expires_refuses_bad_and_past_values(text: str, why: str) -> None:
    with pytest.raises(InputError, match="--expires") as caught:
        tokens.parse_expires(text, NOW)
    assert why in str(caught.value)


@pytest.mark.parametrize("value", ["soon", "0h", "2020-01-01T00:00:00Z", "2027-01-01"])
def test_token_with_a_bad_expiry_exits_2_and_creates_nothing(
    db_url: str, registry_file: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    record_registry(db_url, registry_file)
    before = _written(db_url)
    code, out, err = _token(capsys, db_url, "--operator", "ops", "--expires", value)
    assert (code, out) == (2, "")
    assert err.startswith("gpucap: error: --expires: ")
    assert _written(db_url) == before


def test_an_expiry_is_signed_into_the_token_and_listed(
    db_url: str, registry_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_registry(db_url, registry_file)
    start = utc_now()
    code, out, err = _token(
        capsys, db_url, "--node", "n1", "--site", "acme-ae-1", "--expires", "90d"
    )
    assert code == 0, err
    store = Store.open_existing(Settings(db_url=db_url))
    try:
        principal = tokens.verify(out.strip(), tokens.signing_key(store, None))
    finally:
        store.close()
    assert principal.expires_at is not None
    assert start + timedelta(days=90) <= principal.expires_at <= utc_now() + timedelta(days=90)
    (row,) = json.loads(
        gpucap("ledger", "token", "--list", "--db", db_url, "--format", "json").stdout
    )["tokens"]
    assert row["expires_at"] == iso_instant(principal.expires_at)
    (entry,) = _entries(db_url, "token_issued")
    assert entry["body"]["expires_at"] == row["expires_at"]


def test_an_expired_token_is_refused_on_every_request(ledger: Ledger, clock: Clock) -> None:
    expiry = clock() + timedelta(hours=1)
    token_id, token = tokens.issue(
        ledger.store,
        "node",
        clock(),
        None,
        expires_at=expiry,
        node_id="n1",
        site_id="acme-ae-1",
    )
    header = f"Bearer {token}"
    assert ledger.authenticate(header, "node").token_id == token_id  # verified and cached
    clock.moment = expiry - timedelta(microseconds=1)
    assert ledger.authenticate(header, "node").token_id == token_id
    clock.moment = expiry  # the cached principal's expiry is checked too
    with pytest.raises(AuthError) as caught:
        ledger.authenticate(header, "node")
    assert (caught.value.status_code, caught.value.reason) == (401, "expired")
    assert caught.value.detail == f"token {token_id} expired at {iso_instant(expiry)}"
    ledger._verified.clear()  # and on first verification
    with pytest.raises(AuthError, match="expired"):
        ledger.authenticate(header, "node")
    assert ledger.auth_refusals_total["expired"] == 2


def test_a_token_without_expiry_has_the_claims_it_always_had() -> None:
    key = b"k" * 32
    plain = tokens.Principal(token_id="abc", kind="operator", operator="ops")
    claims = json.loads(tokens._unb64(tokens.sign(plain, key).split(".")[1]))
    assert claims == {"id": "abc", "kind": "operator", "operator": "ops"}
    assert tokens.verify(tokens.sign(plain, key), key) == plain
    dated = tokens.Principal(token_id="abc", kind="operator", operator="ops", expires_at=NOW)
    assert tokens.verify(tokens.sign(dated, key), key) == dated


def test_a_signed_but_malformed_expiry_is_a_malformed_token() -> None:
    key = b"k" * 32
    for exp in (123, "tomorrow"):
        body = tokens._b64(json.dumps({"id": "a", "kind": "operator", "exp": exp}).encode())
        mac = tokens._b64(hmac.new(key, f"gpc1.{body}".encode(), hashlib.sha256).digest())
        with pytest.raises(AuthError, match="malformed_token"):
            tokens.verify(f"gpc1.{body}.{mac}", key)


# -- --label ----------------------------------------------------------------------------------
def test_a_label_is_listed_and_in_the_entry_only_when_given(
    db_url: str, registry_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_registry(db_url, registry_file)
    label = "rack 12 [spare] ünïcode GPU — spare"
    code, _out, err = _token(capsys, db_url, "--operator", "ops", "--label", label)
    assert code == 0, err
    code, _out, err = _token(capsys, db_url, "--auditor", "kpmg", "--label", "x" * 128)
    assert code == 0, err
    code, _out, err = _token(capsys, db_url, "--operator", "plain")
    assert code == 0, err

    listed = gpucap("ledger", "token", "--list", "--db", db_url, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["tokens"]
    assert [(r["label"], r["expires_at"]) for r in rows] == [
        (label, None),
        ("x" * 128, None),
        (None, None),
    ]
    table = gpucap("ledger", "token", "--list", "--db", db_url).stdout.splitlines()
    assert table[0].split()[-5:] == ["revoked", "at", "expires", "at", "label"]
    assert "rack 12 [spare] ünïcode" in table[2]

    bodies = [e["body"] for e in _entries(db_url, "token_issued")]
    assert bodies[0]["label"] == label
    assert bodies[1]["label"] == "x" * 128
    assert set(bodies[2]) == {"id", "kind", "subject", "scope"}  # as entries always were
    verified = gpucap("ledger", "verify", "--db", db_url)
    assert verified.returncode == 0, verified.stderr


@pytest.mark.parametrize(
    ("label", "why"),
    [
        ("", "must not be empty"),
        ("  ", "must not be empty"),
        ("x" * 129, "at most 128 characters, not 129"),
        ("a\x00b", "control character U+0000 at position 1"),
        ("line\nbreak", "control character U+000A at position 4"),
        ("tab\there", "control character U+0009 at position 3"),
        ("del\x7f", "control character U+007F at position 3"),
        ("c1\x85", "control character U+0085 at position 2"),
        ("bad \udcff", "not UTF-8 at position 4"),
    ],
)
def test_a_bad_label_exits_2_and_creates_nothing(
    db_url: str,
    registry_file: Path,
    label: str,
    why: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    record_registry(db_url, registry_file)
    before = _written(db_url)
    code, out, err = _token(capsys, db_url, "--operator", "ops", "--label", label)
    assert (code, out) == (2, "")
    assert err == f"gpucap: error: --label: {why}\n"
    assert _written(db_url) == before


@pytest.mark.parametrize("flag", ["--expires", "--label"])
def test_expires_and_label_only_when_issuing(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"  # refused before the database is opened
    assert main(["ledger", "token", "--db", url, "--revoke", "abc", flag, "1d"]) == 2
    assert capsys.readouterr().err == (
        f"gpucap: error: {flag}: only when issuing a token, not with --revoke\n"
    )
    assert main(["ledger", "token", "--db", url, "--list", flag, "1d"]) == 2
    assert capsys.readouterr().err == (
        f"gpucap: error: {flag}: --list issues and revokes nothing: give it alone\n"
    )
    assert list(tmp_path.iterdir()) == []


# -- decommission revokes the node's tokens ---------------------------------------------------
def test_decommission_revokes_the_nodes_tokens_in_its_transaction(
    ledger: Ledger, clock: Clock, db_url: str
) -> None:
    issue = lambda node: tokens.issue(  # noqa: E731
        ledger.store, "node", clock(), None, node_id=node, site_id="acme-ae-1"
    )
    first, second, gone, other = issue("n1"), issue("n1"), issue("n1"), issue("n2")
    tokens.revoke(ledger.store, gone[0], clock())
    operator = tokens.issue(ledger.store, "operator", clock(), None, operator="ops")
    _ingest(ledger, "n1", "acme-ae-1", n=3)
    for tok in (first, second, other):
        assert ledger.authenticate(f"Bearer {tok[1]}", "node").token_id == tok[0]
    before = _written(db_url)

    dry = gpucap("ledger", "decommission", "--db", db_url, "--node", "n1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == (
        "node n1 would be decommissioned; 3 devices would be closed; 2 tokens would be revoked\n"
    )
    assert _written(db_url) == before

    real = gpucap("ledger", "decommission", "--db", db_url, "--node", "n1", "--by", "alice")
    assert real.returncode == 0, real.stderr
    assert real.stdout == "node n1 decommissioned; 3 devices closed; 2 tokens revoked\n"
    kinds = [r[1] for r in _rows(db_url, "SELECT id, kind FROM log_entry ORDER BY id")]
    assert kinds[-3:] == ["decommission", "token_revoked", "token_revoked"]
    revoked = _entries(db_url, "token_revoked")[-2:]
    assert [e["actor"] for e in revoked] == ["operator:alice"] * 2
    assert [e["body"] for e in revoked] == [  # oldest first, ties (one clock) by id
        {"id": i, "kind": "node", "subject": {"node": "n1", "site": "acme-ae-1"}, "scope": None}
        for i in sorted((first[0], second[0]))
    ]
    decommission_at = _entries(db_url, "decommission")[-1]["recorded_at"]
    assert {e["recorded_at"] for e in revoked} == {decommission_at}

    for tok in (first, second):
        with pytest.raises(AuthError) as caught:
            ledger.authenticate(f"Bearer {tok[1]}", "node")
        assert (caught.value.status_code, caught.value.reason) == (401, "revoked")
    assert ledger.authenticate(f"Bearer {other[1]}", "node").token_id == other[0]
    assert ledger.authenticate(f"Bearer {operator[1]}", "operator").token_id == operator[0]
    states = dict(_rows(db_url, "SELECT id, revoked_at IS NOT NULL FROM token"))
    assert {k: bool(v) for k, v in states.items()} == {
        first[0]: True,
        second[0]: True,
        gone[0]: True,
        other[0]: False,
        operator[0]: False,
    }
    verified = gpucap("ledger", "verify", "--db", db_url, "--projections")
    assert verified.returncode == 0, verified.stderr


def test_decommission_without_tokens_revokes_none(ledger: Ledger, clock: Clock) -> None:
    _ingest(ledger, "n1", "acme-ae-1", n=2)
    assert ingest.decommission_preview(ledger.store, "n1", clock()) == (2, 0)
    before = ledger.store.state().auth_version
    assert ingest.decommission(ledger.store, "n1", clock(), "operator:test") == (2, 0)
    assert ledger.store.state().auth_version == before  # nothing for other processes to re-read


@pytest.mark.slow
def test_a_real_server_refuses_expired_and_decommissioned_tokens(
    db_url: str, registry_file: Path
) -> None:
    record_registry(db_url, registry_file)
    node = gpucap("ledger", "token", "--db", db_url, "--node", "n1", "--site", "acme-ae-1")
    assert node.returncode == 0, node.stderr
    store = Store.open_existing(Settings(db_url=db_url))
    try:
        soon = utc_now() + timedelta(seconds=1)
        _, short = tokens.issue(store, "operator", utc_now(), None, expires_at=soon, operator="o")
    finally:
        store.close()
    while utc_now() <= soon:
        time.sleep(0.05)
    with ledger_server(db_url, registry_file) as url:
        headers = {"Authorization": f"Bearer {node.stdout.strip()}"}
        r = httpx.post(f"{url}/v1/reports", json=report(seq=1, n=2), headers=headers)
        assert r.json()["status"] == "accepted", r.text
        expired = httpx.get(f"{url}/v1/headroom", headers={"Authorization": f"Bearer {short}"})
        assert expired.status_code == 401
        assert expired.json()["reason"] == "expired"
        proc = gpucap("ledger", "decommission", "--db", db_url, "--node", "n1")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.endswith("; 1 tokens revoked\n")
        r = httpx.post(f"{url}/v1/reports", json=report(seq=2, n=2), headers=headers)
        assert r.status_code == 401
        assert r.json()["reason"] == "revoked"
        metrics = httpx.get(f"{url}/metrics").text
        assert 'reason="expired"' in metrics


# -- the 0004 migration -----------------------------------------------------------------------
def test_upgrading_from_0003_keeps_existing_tokens_working(db_url: str) -> None:
    store = Store(db_url)
    try:
        with store.engine.begin() as conn:
            config = _alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "0003")
        with store.engine.begin() as conn:
            key = bytes.fromhex(
                conn.execute(sa.text("SELECT token_key FROM ledger_state")).scalar_one()
            )
            old = tokens.Principal(token_id="old1", kind="operator", operator="ops")
            token = tokens.sign(old, key)
            conn.execute(
                sa.text(
                    "INSERT INTO token (id, kind, node_id, site_id, operator, entity, "
                    "token_sha256, created_at, revoked_at) VALUES ('old1', 'operator', NULL, "
                    "NULL, 'ops', NULL, 'h', '2026-01-01T00:00:00.000000Z', NULL)"
                )
            )
    finally:
        store.close()
    migrated = gpucap("ledger", "migrate", "--db", db_url)
    assert migrated.returncode == 0, migrated.stderr
    assert "revision 0005" in migrated.stdout
    store = Store.open_existing(Settings(db_url=db_url))
    led = Ledger(Settings(db_url=db_url, revocation_ttl_s=0), store)
    try:
        assert led.authenticate(f"Bearer {token}", "operator") == old
    finally:
        led.stop()
        store.close()
    listed = gpucap("ledger", "token", "--list", "--db", db_url, "--format", "json")
    (row,) = json.loads(listed.stdout)["tokens"]
    assert (row["id"], row["expires_at"], row["label"]) == ("old1", None, None)
    assert gpucap("ledger", "token", "--db", db_url, "--revoke", "old1").returncode == 0
