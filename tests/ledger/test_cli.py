"""The `gpucap ledger` commands as users run them: real subprocesses, real databases."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.ledger.support import (
    REGISTRY,
    gpucap,
    ledger_server,
    ledger_server_proc,
    log_kinds,
    record_registry,
    report,
)


def _events(db_url: str) -> list[str]:
    return log_kinds(db_url)


def test_migrate_is_idempotent(db_url: str) -> None:
    for _ in range(2):
        proc = gpucap("ledger", "migrate", "--db", db_url)
        assert proc.returncode == 0, proc.stderr
        assert "revision 0005" in proc.stdout


def test_token_input_errors_exit_2(db_url: str) -> None:
    proc = gpucap("ledger", "token", "--db", db_url, "--node", "n1")
    assert proc.returncode == 2
    assert "node token needs both" in proc.stderr
    proc = gpucap(
        "ledger", "token", "--db", db_url, "--node", "n1", "--site", "s", "--operator", "x"
    )
    assert proc.returncode == 2
    assert gpucap("ledger", "migrate", "--db", db_url).returncode == 0
    proc = gpucap("ledger", "token", "--db", db_url, "--revoke", "nope")
    assert proc.returncode == 2
    assert "--revoke" in proc.stderr


def test_token_is_printed_and_never_stored(db_url: str, registry_file: Path) -> None:
    record_registry(db_url, registry_file)
    proc = gpucap("ledger", "token", "--db", db_url, "--operator", "alice", "--entity", "acme")
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    assert token.startswith("gpc1.")
    token_id = proc.stderr.split()[-1]
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(sa.text("SELECT * FROM token"))]
    finally:
        engine.dispose()
    assert len(rows) == 1
    assert token_id in rows[0]
    assert all(token not in str(v) for v in rows[0])
    assert gpucap("ledger", "token", "--db", db_url, "--revoke", token_id).returncode == 0


ADMIN_COMMANDS = [
    ["token", "--operator", "alice"],
    ["token", "--node", "n1", "--site", "acme-ae-1"],
    ["token", "--revoke", "abc"],
    ["verify"],
    ["rebuild"],
    ["decommission", "--node", "n1"],
    ["decommission", "--dry-run", "--node", "n1"],
    ["token", "--list"],
    ["nodes"],
]


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_admin_commands_never_create_a_database(command: list[str], tmp_path: Path) -> None:
    """A wrong or defaulted --db is an error, not a new empty ledger with a new secret."""
    typo = tmp_path / "typo.db"
    given = gpucap("ledger", *command, "--db", f"sqlite:///{typo}")
    default = gpucap("ledger", *command, env={"GPUCAP_DB": ""}, cwd=tmp_path)
    for proc, url in ((given, f"sqlite:///{typo}"), (default, "sqlite:///gpucap.db")):
        assert proc.returncode == 3, proc.stderr
        assert proc.stderr.splitlines() == [
            f"gpucap: error: database not initialised: run gpucap ledger migrate --db {url}"
        ]
        assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no database file, no writer-lock file


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_admin_commands_refuse_an_unmigrated_database(command: list[str], db_url: str) -> None:
    if db_url.startswith("sqlite:///"):  # an existing but empty file
        Path(db_url.removeprefix("sqlite:///")).touch()
    proc = gpucap("ledger", *command, "--db", db_url)
    assert proc.returncode == 3, proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert "database not initialised: run gpucap ledger migrate --db" in proc.stderr


def test_unreachable_database_exits_3() -> None:
    proc = gpucap("ledger", "verify", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert proc.returncode == 3
    assert proc.stderr.startswith("gpucap: error:")


@pytest.mark.slow
def test_serve_refuses_an_invalid_registry(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(REGISTRY.replace("country: AE}", "country: ZZ}", 1), encoding="utf-8")
    proc = gpucap(
        "ledger", "serve", "--registry", str(bad), "--db", f"sqlite:///{tmp_path / 'x.db'}"
    )
    assert proc.returncode == 2
    assert "sites[0].country" in proc.stderr


@pytest.mark.slow
def test_registry_changes_on_restart_and_sighup_are_events(db_url: str, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    with ledger_server(db_url, registry):
        pass
    with ledger_server(db_url, registry):  # unchanged: no new event
        pass
    assert _events(db_url) == ["registry"]
    registry.write_text(
        REGISTRY
        + "  - {site: acme-ae-1, model: h100-sxm5-80gb, count: 5, installed: 2025-07-01}\n",
        encoding="utf-8",
    )
    with ledger_server(db_url, registry):
        pass
    assert _events(db_url) == ["registry", "registry"]
    registry.write_text(REGISTRY, encoding="utf-8")  # back to the first version: a change too
    with ledger_server(db_url, registry):
        pass
    assert _events(db_url) == ["registry"] * 3


@pytest.mark.slow
def test_sighup_rereads_the_registry(db_url: str, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    with ledger_server_proc(db_url, registry) as (url, proc):
        registry.write_text(REGISTRY.replace("gov_agreement: true", "gov_agreement: false"))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while len(_events(db_url)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _events(db_url) == ["registry", "registry"]
        assert httpx.get(f"{url}/readyz").status_code == 200


@pytest.mark.slow
def test_decommission_and_rebuild_commands(db_url: str, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    record_registry(db_url, registry)
    tok = gpucap("ledger", "token", "--db", db_url, "--node", "n1", "--site", "acme-ae-1")
    admin = gpucap("ledger", "token", "--db", db_url, "--operator", "root").stdout.strip()
    with ledger_server(db_url, registry) as url:
        r = httpx.post(
            f"{url}/v1/reports",
            json=report(seq=1),
            headers={"Authorization": f"Bearer {tok.stdout.strip()}"},
        )
        assert r.json()["status"] == "accepted"
        proc = gpucap("ledger", "decommission", "--db", db_url, "--node", "n1", "--by", "alice")
        assert proc.returncode == 0, proc.stderr
        assert "8 devices closed; 1 tokens revoked" in proc.stdout
        again = gpucap("ledger", "decommission", "--db", db_url, "--node", "n1")
        assert again.returncode == 2
        headers = {"Authorization": f"Bearer {admin}"}
        before = httpx.get(f"{url}/v1/headroom", headers=headers).json()
        rebuilt = gpucap("ledger", "rebuild", "--db", db_url)
        assert rebuilt.returncode == 0, rebuilt.stderr
        # With the two token issues and the node token's revocation by the decommission.
        assert "from 6 log entries" in rebuilt.stdout
        after = httpx.get(f"{url}/v1/headroom", headers=headers).json()
        # The same answer from the same log; only when it was generated differs.
        for answer in (before, after):
            answer["provenance"].pop("generated_at")
            answer["provenance"].pop("known_at")
        assert json.dumps(after, sort_keys=True) == json.dumps(before, sort_keys=True)
    assert _events(db_url) == ["registry", "report", "decommission"]
    assert gpucap("ledger", "verify", "--db", db_url).returncode == 0


@pytest.mark.slow
def test_serve_with_workers_accepts_reports_rereads_the_registry_and_stops(
    db_url: str, tmp_path: Path
) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    record_registry(db_url, registry)
    toks = {
        node: gpucap(
            "ledger", "token", "--db", db_url, "--node", node, "--site", "acme-ae-1"
        ).stdout.strip()
        for node in ("n1", "n2")
    }
    env = {"GPUCAP_LEDGER_WORKERS": "2"}
    with ledger_server_proc(db_url, registry, env) as (url, proc):
        for seq in (1, 2, 2):  # the repeated seq is a duplicate whichever worker answers it
            for node, tok in toks.items():
                r = httpx.post(
                    f"{url}/v1/reports",
                    content=json.dumps(report(node, seq=seq)),
                    headers={"authorization": f"Bearer {tok}", "content-type": "application/json"},
                )
                assert r.status_code == 200, r.text
        assert _events(db_url).count("report") == 2  # seq 2 is a heartbeat: not in the log
        registry.write_text(REGISTRY.replace("gov_agreement: true", "gov_agreement: false"))
        proc.send_signal(signal.SIGHUP)  # the supervisor records it; the workers keep serving
        deadline = time.monotonic() + 30
        while _events(db_url).count("registry") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _events(db_url).count("registry") == 2
        assert httpx.get(f"{url}/readyz").status_code == 200
        proc.terminate()
        assert proc.wait(timeout=20) == 0


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_with_a_bad_registry_is_one_line_and_keeps_the_old_one(
    db_url: str, tmp_path: Path, workers: str
) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    env = {"GPUCAP_LEDGER_WORKERS": workers}
    with ledger_server_proc(db_url, registry, env) as (url, proc):
        for bad in (
            REGISTRY.replace("installed: 2025-06-01", "installed: 2025-02-30").encode(),
            REGISTRY.encode() + b"# \xff\xfe\n",  # not UTF-8
        ):
            registry.write_bytes(bad)
            proc.send_signal(signal.SIGHUP)
            time.sleep(1.0)
            assert httpx.get(f"{url}/readyz").status_code == 200
        assert _events(db_url) == ["registry"]
        # The handler still works: a good change afterwards is recorded.
        registry.write_text(REGISTRY.replace("gov_agreement: true", "gov_agreement: false"))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while len(_events(db_url)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _events(db_url) == ["registry", "registry"]
        proc.terminate()
        proc.wait(timeout=20)
        out = proc.stdout.read() if proc.stdout else ""
    lines = [ln for ln in out.splitlines() if "registry not reloaded" in ln]
    assert len(lines) == 2, out
    assert "inventory[0].installed" in lines[0]
    assert "not UTF-8" in lines[1]
    assert "Traceback" not in out


def test_reload_never_raises_out_of_the_signal_thread(caplog: pytest.LogCaptureFixture) -> None:
    from gpucap.ledger.cli import _reload

    class Broken:
        def load_registry_file(self, path: Path, actor: str) -> bool:
            raise RuntimeError("disk on fire")

    _reload(Broken(), Path("registry.yaml"))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "ERROR",
            "registry not reloaded, the previous one stays: registry.yaml: "
            "RuntimeError: disk on fire",
        )
    ]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["headroom", "--ledger", "notaurl"], "--ledger"),
        (["headroom", "--ledger", "http://"], "--ledger"),
        (["headroom", "--ledger", "ftp://ledger.example"], "--ledger"),
        (["headroom", "--ledger", "http://[::1"], "--ledger"),
        (["headroom", "--ledger", "http://127.0.0.1:1", "--as-of", "2025-02-30"], "--as-of"),
        (["headroom", "--ledger", "http://127.0.0.1:1", "--as-of", "20250901"], "--as-of"),
        (
            ["whatif", "--ledger", "notaurl", "--site", "s", "--model", "m", "--count", "1"],
            "--ledger",
        ),
    ],
)
def test_operator_commands_refuse_bad_input_with_exit_2(args: list[str], field: str) -> None:
    proc = gpucap(*args, env={"GPUCAP_TOKEN": "gpc1.x.y"})
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith(f"gpucap: error: {field}: ")
