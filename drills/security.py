"""`security`: the security matrix of `tests/ledger/test_security_matrix.py` (its table is the
contract) against real `gpucap ledger serve` processes, on SQLite and on a private PostgreSQL
cluster, with `--workers 2` on PostgreSQL so that revocations cross processes. The requests
name the test's registry's sites, so the servers load that registry."""

from __future__ import annotations

from typing import Any

from drills.common import LedgerProc, Result, verify, workdir
from drills.pg import PgCluster
from gpucap.ledger.app import create_app
from gpucap.ledger.settings import Settings
from tests.ledger.support import REGISTRY
from tests.ledger.test_security_matrix import (
    CREDENTIALS,
    EXPECTED,
    Send,
    app_routes,
    expired_credentials,
    http_send,
    run_matrix,
)

METRICS_TOKEN = "security-drill-metrics-0123456789"  # noqa: S105 (a drill's throwaway secret)


def security() -> Result:
    result = Result("security")
    routes = app_routes(create_app(Settings(metrics_token=METRICS_TOKEN)))
    verified: list[str] = []
    calls: list[int] = []

    def counting(send: Send) -> Send:
        def counted(method: str, path: str, headers: dict[str, str], request: Any) -> int:
            calls.append(1)
            return send(method, path, headers, request)

        return counted

    with workdir("security") as root:
        registry = root / "registry.yaml"
        registry.write_text(REGISTRY, encoding="utf-8")
        pg = PgCluster(root)
        try:
            pg.init()
            for name, db_url, workers in (
                ("sqlite", f"sqlite:///{root / 'ledger.db'}", "1"),
                ("postgresql", pg.url, "2"),
            ):
                env = {"GPUCAP_METRICS_TOKEN": METRICS_TOKEN, "GPUCAP_LEDGER_WORKERS": workers}
                ledger = LedgerProc(f"ledger-{name}", root, db_url, registry, env)
                ledger.start_ready()
                try:
                    credentials = expired_credentials(db_url, METRICS_TOKEN)
                    problems = run_matrix(routes, credentials, counting(http_send(ledger.url)))
                finally:
                    ledger.stop()
                result.failures += [f"{name}: {p}" for p in problems]
                clean, text = verify(db_url)
                verified.append(f"{name}: {text}")
                result.check(clean, f"{name}: gpucap ledger verify: {text}")
        finally:
            pg.close()
    cells = len(EXPECTED) * len(CREDENTIALS)
    result.did = (
        f"{len(routes)} routes (read from the app) x {len(CREDENTIALS)} credentials "
        f"({', '.join(CREDENTIALS)}), on SQLite and on PostgreSQL (2 workers)"
    )
    sent = len(calls)
    result.sent = f"{sent} requests ({cells} per database)"
    result.acknowledged = f"{sent - len(result.failures)} answered with the expected status"
    result.verify = "; ".join(verified)
    result.stored = "not counted: the matrix checks statuses (no fault injected)"
    return result
