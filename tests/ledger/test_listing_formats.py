"""Every ledger listing (`ledger nodes`, `ledger token --list`, `ledger events`, `explain`,
`report`) in every format: `-o yaml` is the `json` document, `--no-headers` drops the header
row of csv and table and nothing else, tables show whole TPP; through the real CLI, against the
database and a real server."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import httpx
import pytest
import yaml

from gpucap.ledger.models import Report
from gpucap.ledger.service import Ledger
from tests.ledger.support import H100_TPP, gpucap, ledger_server, record_registry, report


def ok(proc: subprocess.CompletedProcess[str], *codes: int) -> str:
    assert proc.returncode in (codes or (0,)), proc.stderr
    return proc.stdout


def _same_moment(text: str) -> list[str]:
    """The lines of a text whose provenance line names when it was generated, without it."""
    return [re.sub(r"generated \S+", "generated T", line) for line in text.splitlines()]


def assert_formats(*cmd: str, env: dict[str, str] | None = None, code: int = 0) -> str:
    """Run `cmd` in each format; check yaml against json and --no-headers against the full
    csv and table. The full table's text."""
    as_json = json.loads(ok(gpucap(*cmd, "--format", "json", env=env), code))
    as_yaml = yaml.safe_load(ok(gpucap(*cmd, "-o", "yaml", env=env), code))
    for doc in (as_json, as_yaml):  # two answers: only the moment each was made differs
        doc.get("provenance", {}).pop("generated_at", None)
    assert as_yaml == as_json
    assert list(as_yaml) == list(as_json)
    full = _same_moment(ok(gpucap(*cmd, "-o", "csv", env=env), code))
    bare = _same_moment(ok(gpucap(*cmd, "-o", "csv", "--no-headers", env=env), code))
    assert len(full) > 1, full
    assert bare == full[1:]
    full = _same_moment(ok(gpucap(*cmd, "-o", "table", env=env), code))
    bare = _same_moment(ok(gpucap(*cmd, "-o", "table", "--no-headers", env=env), code))
    # Each table's heading is the line above its rule (a report has one table per check).
    rules = [i for i, line in enumerate(full) if line.strip() and set(line.strip()) == {"─"}]
    assert rules, full
    headings = {i - 1 for i in rules} | set(rules)
    assert bare == [line for i, line in enumerate(full) if i not in headings]
    return "\n".join(full)


# -- from the database -------------------------------------------------------------------------
def test_nodes_tokens_and_events_in_every_format(
    ledger: Ledger, db_url: str, registry_file: Path
) -> None:
    body = report(node="n1", site="acme-ae-1", seq=1, n=3)
    assert ledger.ingest(Report.model_validate_json(json.dumps(body))).status == "accepted"
    ok(gpucap("ledger", "token", "--db", db_url, "--operator", "alice", "--label", "a: [b]"))

    table = assert_formats("ledger", "nodes", "--db", db_url)
    assert table.splitlines()[2].split()[0] == "n1"
    assert_formats("ledger", "token", "--list", "--db", db_url)
    tokens = yaml.safe_load(ok(gpucap("ledger", "token", "--list", "--db", db_url, "-o", "yaml")))
    assert [t["label"] for t in tokens["tokens"]] == ["a: [b]"]  # quoted, not read as YAML
    assert_formats("ledger", "events", "--db", db_url)


def test_no_headers_without_list_is_a_usage_error(tmp_path: Path) -> None:
    proc = gpucap("ledger", "token", "--operator", "x", "--no-headers", "--db", "sqlite:///x.db")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["gpucap: error: --no-headers: only with --list"]


# -- from a real server ------------------------------------------------------------------------
@pytest.mark.slow
def test_explain_and_report_in_every_format(db_url: str, registry_file: Path) -> None:
    record_registry(db_url, registry_file)
    node = ok(gpucap("ledger", "token", "--db", db_url, "--node", "n1", "--site", "acme-ae-1"))
    admin = ok(gpucap("ledger", "token", "--db", db_url, "--operator", "root")).strip()
    env = {"GPUCAP_TOKEN": admin}
    today = datetime.now(UTC).date()
    period = ("--from", (today - timedelta(days=2)).isoformat(), "--to", today.isoformat())
    with ledger_server(db_url, registry_file) as url:
        r = httpx.post(
            f"{url}/v1/reports",
            json=report(seq=1, n=8),
            headers={"Authorization": f"Bearer {node.strip()}"},
        )
        assert r.json()["status"] == "accepted", r.text
        scope = ("--scope", "entity:acme/country:AE")
        rule = ("--rule", "uveu_tier2_country_share")
        table = assert_formats("explain", "--ledger", url, *rule, *scope, env=env)
        assert "used 126,656 TPP" in table.splitlines()[0]  # 8 x 15,832, whole TPP
        assert "15,832" in table
        report_table = assert_formats("report", "--ledger", url, *period, env=env)
        assert "Period report" in report_table
        doc = json.loads(ok(gpucap("report", "--ledger", url, *period, "-o", "json", env=env)))
        share = next(
            c for c in doc["steps"][-1]["checks"] if c["scope"] == "entity:acme/country:AE"
        )
        # acme: 1,000 H100 declared in the US, 8 reported in AE; at most 7% in AE.
        assert share["share_exact"] == "1/126"
        exact = (Fraction(7, 100) * 1008 - 8) * H100_TPP / (1 - Fraction(7, 100))
        assert share["headroom_tpp_exact"] == str(exact) == "99044992/93"
        assert share["headroom_tpp"] == float(exact)
        assert_formats("ledger", "nodes", "--ledger", url, env=env)
