"""The hash chain: pure verification, and tamper drills with raw SQL on both databases."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import sqlalchemy as sa

from gpucap.ledger.errors import ChainBrokenError
from gpucap.ledger.eventlog import GENESIS_HASH, EventRow, Head, read_rows, row_hash, verify_rows
from gpucap.ledger.models import Report
from gpucap.ledger.service import Ledger
from tests.ledger.support import gpucap, report


def chain(n: int) -> list[EventRow]:
    rows, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        body = json.dumps({"n": seq})
        h = row_hash(seq, "2025-01-01T00:00:00.000000Z", "report", "node:x", body, prev)
        rows.append(EventRow(seq, "2025-01-01T00:00:00.000000Z", "report", "node:x", body, prev, h))
        prev = h
    return rows


def test_an_intact_chain_verifies_to_its_head() -> None:
    rows = chain(5)
    assert verify_rows(rows, Head(5, rows[-1].hash)) == Head(5, rows[-1].hash)
    assert verify_rows([], Head(0, GENESIS_HASH)) == Head(0, GENESIS_HASH)


@pytest.mark.parametrize(
    ("mutate", "bad_seq", "reason"),
    [
        (
            lambda r: [*r[:2], replace(r[2], body="{}"), *r[3:]],
            3,
            "altered",
        ),
        (lambda r: r[:1] + r[2:], 2, "missing"),
        (lambda r: r[:4], 5, "tail deleted"),
        (lambda r: [r[1], r[0], *r[2:]], 1, "missing"),
        (lambda r: [*r, *chain(6)[5:]], 6, "inserted"),
    ],
)
def test_each_mutation_names_the_first_bad_row(mutate, bad_seq, reason) -> None:  # type: ignore[no-untyped-def]
    rows = chain(5)
    with pytest.raises(ChainBrokenError, match=reason) as info:
        verify_rows(mutate(rows), Head(5, rows[-1].hash))
    assert info.value.seq == bad_seq


def _events(ledger: Ledger, n: int) -> None:
    for seq in range(1, n + 1):
        ledger.ingest(Report.model_validate_json(json.dumps(report(seq=seq, n=2 + seq % 3))))


def _verify(ledger: Ledger, *extra: str) -> tuple[int, str]:
    proc = gpucap("ledger", "verify", "--db", ledger.store.url, *extra)
    return proc.returncode, proc.stdout + proc.stderr


def test_verify_cli_passes_then_catches_an_altered_row(ledger: Ledger) -> None:
    _events(ledger, 4)
    code, out = _verify(ledger)
    assert code == 0, out
    head = ledger.store.state().head_hash
    assert f"head 5 {head}" in out
    assert _verify(ledger, "--expect-head", head)[0] == 0
    with ledger.store.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE event SET body = replace(body, :old, :new) WHERE seq = 3"),
            {"old": '"seq":2', "new": '"seq":9'},
        )
    code, out = _verify(ledger)
    assert code == 3
    assert "event[3]" in out
    assert "altered" in out


def test_verify_catches_a_deleted_middle_row(ledger: Ledger) -> None:
    _events(ledger, 4)
    with ledger.store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM event WHERE seq = 2"))
    code, out = _verify(ledger)
    assert code == 3
    assert "event[2]" in out
    assert "missing" in out


def test_verify_catches_a_deleted_tail_row(ledger: Ledger) -> None:
    _events(ledger, 4)
    with ledger.store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM event WHERE seq = 5"))
    code, out = _verify(ledger)
    assert code == 3
    assert "event[5]" in out


def test_verify_catches_an_inserted_row_even_with_a_valid_hash(ledger: Ledger) -> None:
    _events(ledger, 2)
    state = ledger.store.state()
    body = json.dumps({"forged": True})
    seq = state.head_seq + 1
    digest = row_hash(seq, "2025-09-01T00:00:00.000000Z", "report", "node:x", body, state.head_hash)
    with ledger.store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO event (seq, recorded_at, kind, actor, body, prev_hash, hash) "
                "VALUES (:seq, '2025-09-01T00:00:00.000000Z', 'report', 'node:x', :body, :prev, :h)"
            ),
            {"seq": seq, "body": body, "prev": state.head_hash, "h": digest},
        )
    code, out = _verify(ledger)
    assert code == 3
    assert f"event[{seq}]" in out
    assert "inserted" in out


def test_verify_catches_a_row_inserted_in_the_middle(ledger: Ledger) -> None:
    _events(ledger, 3)
    with ledger.store.engine.begin() as conn:
        # Make room by renumbering the tail, then insert a row at seq 3.
        for seq in (4, 3):
            conn.execute(
                sa.text("UPDATE event SET seq = :n WHERE seq = :o"), {"n": seq + 1, "o": seq}
            )
        conn.execute(
            sa.text(
                "INSERT INTO event (seq, recorded_at, kind, actor, body, prev_hash, hash) "
                "SELECT 3, recorded_at, kind, actor, body, prev_hash, hash FROM event WHERE seq = 2"
            )
        )
    code, out = _verify(ledger)
    assert code == 3
    assert "event[3]" in out


def test_read_rows_sees_rows_with_any_seq(ledger: Ledger) -> None:
    _events(ledger, 1)
    with ledger.store.read() as conn:
        assert [r.seq for r in read_rows(conn, batch=1)] == [1, 2]
