"""End to end against a real `gpucap ledger serve`: known_at, provenance, explain, events,
the evidence bundle over HTTP and the auditor's commands."""

from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path

import httpx
import pytest

from gpucap.ledger import tokens
from gpucap.ledger.settings import Settings, utc_now
from gpucap.ledger.store import Store
from tests.ledger.support import REGISTRY, gpucap, ledger_server, report

pytestmark = pytest.mark.slow


def _tokens(db_url: str) -> dict[str, str]:
    store = Store.open(Settings(db_url=db_url))
    made = {
        "n1": ("node", {"node_id": "n1", "site_id": "acme-ae-1"}),
        "n2": ("node", {"node_id": "n2", "site_id": "nimbus-ae-1"}),
        "auditor": ("auditor", {"auditor": "ext"}),
        "nimbus": ("operator", {"operator": "ops", "entity": "nimbus"}),
    }
    try:
        return {
            name: tokens.issue(store, kind, utc_now(), None, **subject)[1]
            for name, (kind, subject) in made.items()
        }
    finally:
        store.close()


def _signed(url: str, token: str, at_least: int) -> int:
    """The signed log size once it reaches `at_least` (the integrator signs within a second)."""
    deadline = time.monotonic() + 20
    while True:
        text = httpx.get(f"{url}/v1/log/checkpoint", headers=_auth(token), timeout=10).text
        size = int(text.split("\n")[1])
        if size >= at_least or time.monotonic() > deadline:
            return size
        time.sleep(0.1)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_an_auditor_works_through_a_real_ledger(db_url: str, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    toks = _tokens(db_url)
    with ledger_server(db_url, registry) as url:
        get = lambda path, token="auditor", **params: httpx.get(  # noqa: E731
            f"{url}{path}", headers=_auth(toks[token]), params=params, timeout=60
        )
        for node, site in (("n1", "acme-ae-1"), ("n2", "nimbus-ae-1")):
            body = report(node=node, site=site, n=8)
            answer = httpx.post(f"{url}/v1/reports", json=body, headers=_auth(toks[node]))
            assert answer.status_code == 200, answer.text
        size = _signed(url, toks["auditor"], 1)
        known = f"log_size={size}"
        then = get("/v1/headroom", known_at=known).json()
        assert then["provenance"]["log_size"] == size
        # A later change moves the live answer but not the one at `known`.
        grown = report(node="n2", site="nimbus-ae-1", seq=2, n=16)
        assert httpx.post(f"{url}/v1/reports", json=grown, headers=_auth(toks["n2"])).is_success
        _signed(url, toks["auditor"], size + 1)
        assert get("/v1/headroom").json()["checks"] != then["checks"]
        assert get("/v1/headroom", known_at=known).json()["checks"] == then["checks"]
        # Explain: the contributions add up to the headroom figure.
        check = next(c for c in then["checks"] if c["rule"] == "nveu_country_cap")
        explained = get("/v1/explain", rule=check["rule"], scope=check["scope"], known_at=known)
        assert explained.status_code == 200, explained.text
        doc = explained.json()
        total = sum(Fraction(c["tpp"]) for c in doc["contributions"] if c["figure"] == "used_tpp")
        assert total == Fraction(check["used_tpp"])
        assert get("/v1/explain", rule="nope", scope="country:AE").status_code == 422
        scoped = get(
            "/v1/explain", "nimbus", rule="uveu_tier2_country_share", scope="entity:acme/country:AE"
        )
        assert scoped.status_code == 403
        # Events: scoped to the operator's entity.
        mine = get("/v1/events", "nimbus").json()["entries"]
        assert mine
        assert "acme-ae-1" not in json.dumps(mine)
        assert get("/v1/events", kind="bogus").status_code == 422
        # The evidence bundle over HTTP verifies offline with the auditor's key.
        assert get("/v1/evidence", "nimbus").status_code == 403
        zipped = get("/v1/evidence", known_at=known, as_of="2025-09-30")
        assert zipped.status_code == 200
        assert zipped.headers["content-type"] == "application/zip"
        path = tmp_path / "evidence.zip"
        path.write_bytes(zipped.content)
        key = httpx.get(f"{url}/v1/log/key", headers=_auth(toks["auditor"])).text.strip()
        ok = gpucap("audit", "verify", str(path), "--key", key)
        assert ok.returncode == 0, ok.stderr
        # The CLI speaks the same contracts.
        env = {"GPUCAP_TOKEN": toks["auditor"]}
        out = gpucap("headroom", "--ledger", url, "--known-at", f"log:{size}", env=env)
        assert out.returncode in (0, 1), out.stderr
        assert f"log size {size}" in out.stdout
        out = gpucap(
            "explain",
            "--ledger",
            url,
            "--rule",
            check["rule"],
            "--scope",
            check["scope"],
            "--known-at",
            f"log:{size}",
            "--format",
            "json",
            env=env,
        )
        assert json.loads(out.stdout)["used_tpp"] == check["used_tpp"]
        out = gpucap(
            "explain",
            "--ledger",
            url,
            "--rule",
            check["rule"],
            "--scope",
            check["scope"],
            "--format",
            "csv",
            env=env,
        )
        assert out.stdout.splitlines()[0].startswith("figure,source,site")
        out = gpucap("ledger", "events", "--ledger", url, "--all", "--format", "csv", env=env)
        assert out.returncode == 0, out.stderr
        assert len(out.stdout.splitlines()) >= 4
        bad = gpucap("headroom", "--ledger", url, "--known-at", "log_size=3", env=env)
        assert bad.returncode == 2
    # Offline, on the database: the same export and events.
    exported = tmp_path / "cli.zip"
    out = gpucap(
        "ledger",
        "export",
        "--db",
        db_url,
        "--output",
        str(exported),
        "--known-at",
        f"log:{size}",
        "--as-of",
        "2025-09-30",
    )
    assert out.returncode == 0, out.stderr
    assert gpucap("audit", "verify", str(exported), "--key", key).returncode == 0
    out = gpucap("ledger", "events", "--db", db_url, "--kind", "report")
    assert [e["body"]["node_id"] for e in json.loads(out.stdout)["entries"]] == ["n1", "n2", "n2"]
