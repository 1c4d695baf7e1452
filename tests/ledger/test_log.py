"""The transparency log on both databases: integration, proofs against signed checkpoints, and
the tamper drills `gpucap ledger verify` must catch (entries, tree nodes, checkpoints, rows)."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gpucap.ledger import log, logcheck, merkle, note, replay
from gpucap.ledger.errors import LogBrokenError
from gpucap.ledger.models import Report
from gpucap.ledger.service import Ledger
from gpucap.ledger.settings import Settings
from gpucap.ledger.store import Store
from tests.ledger.support import REGISTRY, Clock, device, gpucap, report


def rep(**kw: object) -> Report:
    return Report.model_validate_json(json.dumps(report(**kw)))  # type: ignore[arg-type]


def grow(led: Ledger, clock: Clock, reports: int = 6) -> None:
    """A few changed reports from two nodes, each integrated in its own checkpoint."""
    for seq in range(1, reports + 1):
        clock.moment += timedelta(minutes=2)
        for node, site in (("n1", "acme-ae-1"), ("n2", "nimbus-ae-1")):
            devices = [device(i, node) for i in range(8 - seq % 2)]
            led.ingest(rep(node=node, site=site, seq=seq, devices=devices))
        led.integrator.run_once()


def verifier(led: Ledger) -> note.Verifier:
    return note.parse_verifier_key(led.signer.verifier_key)


def check(led: Ledger) -> logcheck.Verified:
    return logcheck.verify_stored(led.store, verifier(led))


def sql(led: Ledger, text: str, **params: object) -> None:
    with led.store.write() as conn:
        conn.execute(sa.text(text), params)


def test_every_entry_is_in_the_signed_tree_and_its_proof_verifies(
    ledger: Ledger, clock: Clock
) -> None:
    grow(ledger, clock)
    with ledger.store.read() as conn:
        tree = log.tree(conn)
        checkpoint = note.open_checkpoint(tree.note, verifier(ledger))
        assert (checkpoint.size, checkpoint.root) == (tree.size, tree.root)
        assert tree.size == 1 + 12  # the registry and twelve changed reports
        leaves = [leaf for _i, leaf in log.entries(conn, 0, tree.size)]
        assert merkle.root([merkle.leaf_hash(x.encode()) for x in leaves]) == checkpoint.root
        for index, leaf in enumerate(leaves):
            leaf_hash, proof = log.inclusion(conn, index, tree.size)
            assert leaf_hash == merkle.leaf_hash(leaf.encode())
            merkle.verify_inclusion(index, tree.size, leaf_hash, proof, checkpoint.root)
    assert check(ledger).size == tree.size


def test_every_two_kept_checkpoints_are_consistent(ledger: Ledger, clock: Clock) -> None:
    ledger.settings.__dict__["log_checkpoint_keep_s"] = 0  # keep every checkpoint
    ledger.integrator._keep_s = 0
    grow(ledger, clock)
    with ledger.store.read() as conn:
        kept = [
            note.open_checkpoint(text, verifier(ledger))
            for (text,) in conn.execute(sa.text("SELECT note FROM checkpoint ORDER BY size"))
        ]
        assert len(kept) >= 6
        for i, old in enumerate(kept):
            for new in kept[i + 1 :]:
                proof = log.consistency(conn, old.size, new.size)
                merkle.verify_consistency(old.size, new.size, proof, old.root, new.root)
    assert check(ledger).checkpoints == len(kept)


def test_an_entry_is_signed_once_however_often_integration_runs(
    ledger: Ledger, clock: Clock
) -> None:
    assert ledger.integrator.run_once() == 1  # the registry
    ledger.ingest(rep(seq=1))
    assert ledger.integrator.run_once() == 1
    assert ledger.integrator.run_once() == 0  # nothing pending: no new checkpoint
    with ledger.store.read() as conn:
        ids = [r[0] for r in conn.execute(sa.text("SELECT idx FROM log_entry ORDER BY idx"))]
    assert ids == list(range(len(ids)))


TAMPER = [
    (
        "altered entry",
        "UPDATE log_entry SET leaf = replace(leaf, 'GPU-n1-0003', 'GPU-n1-9999') WHERE idx = 3",
        "entry[3]",
    ),
    ("deleted entry", "DELETE FROM log_entry WHERE idx = 4", "entry[4]"),
    (
        "reordered entries",
        "UPDATE log_entry SET idx = -1 WHERE idx = 5; UPDATE log_entry SET idx = 5 WHERE idx = 6; "
        "UPDATE log_entry SET idx = 6 WHERE idx = -1",
        "entry[5]",
    ),
    (
        "inserted entry",
        "INSERT INTO log_entry (idx, kind, recorded_at, leaf) "
        "SELECT 1000, kind, recorded_at, leaf FROM log_entry WHERE idx = 2",
        "entry[1000]",
    ),
    (
        "altered tree node",
        "UPDATE tree_node SET hash = (SELECT hash FROM tree_node WHERE level = 1 AND idx = 0) "
        "WHERE level = 1 AND idx = 1",
        "tree_node[1,1]",
    ),
    ("deleted tree node", "DELETE FROM tree_node WHERE level = 2 AND idx = 0", "tree_node[2,0]"),
]


@pytest.mark.parametrize(("what", "statement", "where"), TAMPER, ids=[t[0] for t in TAMPER])
def test_verify_names_the_first_bad_entry_or_node(
    ledger: Ledger, clock: Clock, what: str, statement: str, where: str
) -> None:
    grow(ledger, clock)
    check(ledger)
    for one in statement.split("; "):
        sql(ledger, one)
    with pytest.raises(LogBrokenError) as info:
        check(ledger)
    assert info.value.where == where, str(info.value)


def test_a_consistently_rewritten_tree_fails_against_the_signature(
    ledger: Ledger, clock: Clock
) -> None:
    """Rewriting an entry and every hash above it leaves only the signature to catch it."""
    grow(ledger, clock)
    with ledger.store.write() as conn:
        conn.execute(sa.text("UPDATE log_entry SET leaf = replace(leaf, 'n1', 'nX') WHERE idx = 1"))
        leaves = [leaf for _i, leaf in log.entries(conn, 0, 10**9)]
        conn.execute(sa.text("DELETE FROM tree_node"))
        nodes, _frontier, _size = merkle.append(
            [], 0, [merkle.leaf_hash(x.encode()) for x in leaves]
        )
        for n in nodes:
            conn.execute(
                sa.text("INSERT INTO tree_node (level, idx, hash) VALUES (:l, :i, :h)"),
                {"l": n.level, "i": n.index, "h": n.hash},
            )
    with pytest.raises(LogBrokenError, match="differs from the signed checkpoint"):
        check(ledger)


def test_a_forged_checkpoint_signature_is_caught(ledger: Ledger, clock: Clock) -> None:
    grow(ledger, clock)
    with ledger.store.read() as conn:
        tree = log.tree(conn)
    forged = note.sign_checkpoint(
        ledger.signer.origin,
        tree.size,
        tree.root,
        ledger.signer.origin,
        Ed25519PrivateKey.generate(),
    )
    sql(ledger, "UPDATE log_state SET note = :n", n=forged)
    with pytest.raises(LogBrokenError, match="signature or format does not verify"):
        check(ledger)


def test_a_rewritten_log_signed_with_a_new_key_fails_against_the_pinned_key(
    ledger: Ledger, clock: Clock
) -> None:
    """Whoever can write the database can replace the key too: the auditor pins the key."""
    grow(ledger, clock)
    pinned = verifier(ledger)
    with ledger.store.read() as conn:
        tree = log.tree(conn)
    other = Ed25519PrivateKey.generate()
    resigned = note.sign_checkpoint(
        ledger.signer.origin, tree.size, tree.root, ledger.signer.origin, other
    )
    sql(ledger, "UPDATE log_state SET note = :n", n=resigned)
    with pytest.raises(LogBrokenError, match="signature or format does not verify"):
        logcheck.verify_stored(ledger.store, pinned)


def test_projections_equal_a_replay_and_an_altered_row_is_named(
    ledger: Ledger, clock: Clock
) -> None:
    grow(ledger, clock)
    clock.moment += timedelta(days=1)
    ledger.ingest(rep(seq=100, devices=[device(i, "n1") for i in range(7)]))  # presence-free
    ledger.integrator.run_once()
    assert replay.compare(ledger.store, ledger.catalogue) > 0
    sql(ledger, "UPDATE inventory_line SET count = count + 1 WHERE site_id = 'nimbus-ae-1'")
    with pytest.raises(LogBrokenError, match=r"inventory_line\[nimbus-ae-1\|.*count is"):
        replay.compare(ledger.store, ledger.catalogue)


def test_projections_verify_while_the_ledger_takes_reports(ledger: Ledger, clock: Clock) -> None:
    """The replay and the comparison read one snapshot: later writes are neither."""
    import threading

    stop = threading.Event()

    def traffic() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            node = f"n{seq % 7}"
            devices = [device(i, node) for i in range(1 + seq % 4)]
            ledger.ingest(rep(node=node, seq=seq, devices=devices))
            if seq % 5 == 0:
                ledger.integrator.run_once()

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        for _ in range(4):
            assert replay.compare(ledger.store, ledger.catalogue) > 0
    finally:
        stop.set()
        sender.join()


def test_verify_cli_exit_codes_and_messages(ledger: Ledger, clock: Clock) -> None:
    grow(ledger, clock)
    url = ledger.settings.db_url
    ok = gpucap("ledger", "verify", "--db", url, "--projections")
    assert ok.returncode == 0, ok.stderr
    assert "ok: 13 entries" in ok.stdout
    assert "projections equal a replay" in ok.stdout
    with ledger.store.read() as conn:
        root = base64.b64encode(log.tree(conn).root).decode()
    assert f"root 13 {root}" in ok.stdout
    key = gpucap("ledger", "log-key", "--db", url)
    assert key.stdout.strip() == ledger.signer.verifier_key
    sql(ledger, "UPDATE device SET tpp = 1 WHERE uuid = 'GPU-n2-0001'")
    assert gpucap("ledger", "verify", "--db", url).returncode == 0  # the tree is intact
    bad = gpucap("ledger", "verify", "--db", url, "--projections")
    assert bad.returncode == 3
    assert "device[n2/GPU-n2-0001]: tpp is 1 in the projection, 15832 from the log" in bad.stderr
    sql(ledger, "DELETE FROM log_entry WHERE idx = 7")
    gone = gpucap("ledger", "verify", "--db", url)
    assert gone.returncode == 3
    assert "entry[7]: missing" in gone.stderr


def test_a_key_file_and_an_origin_sign_the_log(db_url: str, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "log.pem"
    path.write_text(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )
    env = {"GPUCAP_LOG_KEY_FILE": str(path), "GPUCAP_LOG_ORIGIN": "ledger.example.org/prod"}
    assert gpucap("ledger", "migrate", "--db", db_url, env=env).returncode == 0
    printed = gpucap("ledger", "log-key", "--db", db_url, env=env).stdout.strip()
    assert printed == note.verifier_key("ledger.example.org/prod", key.public_key())
    token = gpucap("ledger", "token", "--db", db_url, "--auditor", "kpmg", env=env)
    assert token.returncode == 0, token.stderr
    store = Store.open(Settings(db_url=db_url))
    try:
        with store.read() as conn:
            text = log.tree(conn).note
    finally:
        store.close()
    signed = note.open_checkpoint(text, note.parse_verifier_key(printed))
    assert signed.origin == "ledger.example.org/prod"
    assert signed.size == 1  # the auditor token's issue
    verified = gpucap("ledger", "verify", "--db", db_url, "--key", printed, env=env)
    assert verified.returncode == 0, verified.stderr
    # Without the file the database's own key signs: the pinned key refuses its checkpoints.
    other = gpucap("ledger", "verify", "--db", db_url, "--key", printed)
    assert other.returncode == 0  # nothing new was signed with the other key yet
    gpucap("ledger", "token", "--db", db_url, "--auditor", "eve")
    refused = gpucap("ledger", "verify", "--db", db_url, "--key", printed)
    assert refused.returncode == 3
    assert "signature or format does not verify" in refused.stderr


BAD_LOG_SETTINGS = [
    ({"GPUCAP_LOG_ORIGIN": "two words"}, "GPUCAP_LOG_ORIGIN: must be non-empty, without spaces"),
    ({"GPUCAP_LOG_ORIGIN": "a+b"}, "GPUCAP_LOG_ORIGIN: must be non-empty, without spaces or '+'"),
    ({"GPUCAP_LOG_KEY_FILE": "/nonexistent/key.pem"}, "GPUCAP_LOG_KEY_FILE: cannot read"),
    ({"GPUCAP_LOG_INTEGRATE_INTERVAL_S": "soon"}, "GPUCAP_LOG_INTEGRATE_INTERVAL_S: expected"),
    (
        {"GPUCAP_LOG_INTEGRATE_INTERVAL_S": "inf"},
        "GPUCAP_LOG_INTEGRATE_INTERVAL_S: must be a finite",
    ),
    ({"GPUCAP_LOG_CHECKPOINT_KEEP_S": "nan"}, "GPUCAP_LOG_CHECKPOINT_KEEP_S: must be a finite"),
    ({"GPUCAP_LOG_ORIGIN": "tab\there"}, "GPUCAP_LOG_ORIGIN: must be non-empty"),
    ({"GPUCAP_LOG_ORIGIN": "bell\x07"}, "GPUCAP_LOG_ORIGIN: must be non-empty"),
]


@pytest.mark.parametrize(("env", "message"), BAD_LOG_SETTINGS)
def test_bad_log_settings_are_exit_2_naming_the_variable(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    result = gpucap("ledger", "migrate", "--db", url, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_serve_with_a_bad_key_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    env = {"GPUCAP_LOG_KEY_FILE": str(tmp_path / "missing.pem")}
    result = gpucap("ledger", "serve", "--registry", str(registry), "--db", url, env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "GPUCAP_LOG_KEY_FILE: cannot read" in result.stderr


def test_the_origin_cannot_change_once_the_log_is_signed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    first = gpucap("ledger", "migrate", "--db", url, env={"GPUCAP_LOG_ORIGIN": "a.example/log"})
    assert first.returncode == 0, first.stderr
    key = gpucap("ledger", "log-key", "--db", url)  # without the variable: the signed origin
    assert key.stdout.startswith("a.example/log+")
    moved = gpucap("ledger", "log-key", "--db", url, env={"GPUCAP_LOG_ORIGIN": "b.example/log"})
    assert moved.returncode == 2
    assert "the log was signed as 'a.example/log'; its origin cannot change" in moved.stderr


def test_a_key_file_that_is_not_an_ed25519_key_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "log.pem"
    path.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    result = gpucap("ledger", "migrate", "--db", url, env={"GPUCAP_LOG_KEY_FILE": str(path)})
    assert result.returncode == 2
    assert "GPUCAP_LOG_KEY_FILE: is not an unencrypted PKCS#8 PEM private key" in result.stderr


def test_the_snapshot_says_how_long_the_oldest_entry_has_waited_for_a_signature(
    ledger: Ledger, clock: Clock
) -> None:
    ledger.integrator.run_once()
    ledger.refresh_snapshot(force=True)
    assert ledger.snapshot().log_unsigned_age_s == 0.0
    ledger.ingest(rep(seq=1))  # pending: nothing integrates in this test's ledger
    clock.moment += timedelta(seconds=30)
    ledger.refresh_snapshot()
    assert ledger.snapshot().log_unsigned_age_s == 30.0
    ledger.integrator.run_once()
    ledger.refresh_snapshot()
    assert ledger.snapshot().log_unsigned_age_s == 0.0
