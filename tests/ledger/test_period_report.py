"""`gpucap report` and `GET /v1/report`: steps, the numbers against `/v1/headroom`, scopes and
refusals, the renderings, and the command against a real `gpucap ledger serve`."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from calendar import monthrange
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpucap.ledger import tokens
from gpucap.ledger.errors import AuthError, RejectedError
from gpucap.ledger.models import Report
from gpucap.ledger.periodreport import (
    CHECK_FIELDS,
    CSV_FIELDS,
    MAX_STEPS,
    assemble,
    parse_period,
    report_answer,
    report_csv,
    report_table,
    step_dates,
)
from gpucap.ledger.service import Ledger
from gpucap.ledger.settings import Settings, utc_now
from gpucap.ledger.store import Store
from gpucap.ledger.tokens import Principal
from gpucap.ledger.views import can_see
from tests.ledger.support import H100_TPP, REGISTRY, Clock, at, gpucap, ledger_server, report

ADMIN = Principal("a", "operator", operator="root")
ACME = Principal("b", "operator", operator="ops", entity="acme")
SHARE = ("uveu_tier2_country_share", "entity:acme/country:AE")  # 7% of acme's TPP in AE


def rep(**kw: Any) -> Report:
    return Report.model_validate_json(json.dumps(report(**kw)))


def days(*texts: str) -> tuple[date, ...]:
    return tuple(date.fromisoformat(t) for t in texts)


def check(step: dict[str, Any], rule: str, scope: str) -> dict[str, Any]:
    found = [c for c in step["checks"] if (c["rule"], c["scope"]) == (rule, scope)]
    assert len(found) == 1, step["checks"]
    return found[0]


# -- steps -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("start", "end", "step", "want"),
    [
        ("2025-09-01", "2025-09-01", "day", "09-01"),
        ("2025-02-27", "2025-03-02", "day", "02-27 02-28 03-01 03-02"),
        ("2025-09-01", "2025-09-15", "week", "09-01 09-08 09-15"),
        ("2025-09-01", "2025-09-20", "week", "09-01 09-08 09-15 09-20"),  # `to` closes it
        ("2025-09-01", "2025-09-05", "week", "09-01 09-05"),
        ("2025-01-31", "2025-06-30", "month", "01-31 02-28 03-31 04-30 05-31 06-30"),
        ("2025-01-30", "2025-03-30", "month", "01-30 02-28 03-30"),
        ("2025-01-31", "2025-03-15", "month", "01-31 02-28 03-15"),
        ("2025-03-15", "2025-03-15", "month", "03-15"),
        ("2025-09-15", "2025-12-14", "month", "09-15 10-15 11-15 12-14"),
    ],
)
def test_steps(start: str, end: str, step: str, want: str) -> None:
    """`want`: month-day of each step in 2025."""
    period = parse_period(start, end, step)
    assert period.days == days(*(f"2025-{d}" for d in want.split()))
    assert (period.start, period.end, period.step) == (period.days[0], period.days[-1], step)


@pytest.mark.parametrize(
    ("start", "end", "step", "want"),
    [
        ("2024-01-31", "2024-03-31", "month", "2024-01-31 2024-02-29 2024-03-31"),  # a leap year
        (
            "2024-11-30",
            "2025-03-01",
            "month",
            "2024-11-30 2024-12-30 2025-01-30 2025-02-28 2025-03-01",
        ),
        ("9999-12-20", "9999-12-31", "week", "9999-12-20 9999-12-27 9999-12-31"),
    ],
)
def test_steps_across_years(start: str, end: str, step: str, want: str) -> None:
    assert parse_period(start, end, step).days == days(*want.split())


def test_the_step_defaults_to_a_day() -> None:
    assert parse_period("2025-09-01", "2025-09-03", None).days == days(
        "2025-09-01", "2025-09-02", "2025-09-03"
    )


@given(
    st.dates(date(2000, 1, 1), date(2100, 12, 31)),
    st.integers(0, 800),
    st.sampled_from(["day", "week", "month"]),
)
def test_steps_run_from_start_to_end_in_order(start: date, length: int, step: str) -> None:
    end = start + timedelta(days=length)
    got = step_dates(start, end, step)
    assert got[0] == start
    assert got[-1] == end
    assert all(a < b for a, b in itertools.pairwise(got))
    if step == "day":
        assert len(got) == length + 1
    if step == "week":
        assert all((d - start).days % 7 == 0 for d in got[:-1])
    if step == "month":  # the day of `start`, or the last day of a shorter month
        assert all(d.day == min(start.day, monthrange(d.year, d.month)[1]) for d in got[:-1])


def test_the_period_limit_is_inclusive() -> None:
    start = date(2015, 1, 1)
    last = start + timedelta(days=MAX_STEPS - 1)
    assert len(parse_period(start.isoformat(), last.isoformat(), "day").days) == MAX_STEPS
    over = (last + timedelta(days=1)).isoformat()
    with pytest.raises(RejectedError) as info:
        parse_period(start.isoformat(), over, "day")
    assert info.value.path == "to"
    assert f"more than {MAX_STEPS} daily steps" in info.value.reason
    assert len(parse_period(start.isoformat(), over, "week").days) < MAX_STEPS


@pytest.mark.parametrize(
    ("start", "end", "step", "field", "reason"),
    [
        ("2025-09-02", "2025-09-01", "day", "from", "after to (2025-09-01)"),
        ("20250901", "2025-09-02", "day", "from", "expected a date"),
        ("2025-09-01", "2025-02-30", "day", "to", "not a valid date"),
        ("2025-09-01", "2025-09-01T00:00:00", "day", "to", "expected a date"),
        (None, "2025-09-01", "day", "from", "required"),
        ("2025-09-01", None, "day", "to", "required"),
        ("2025-09-01", "2025-09-02", "year", "step", "expected one of day, week, month"),
        ("1990-01-01", "2025-09-02", "day", "to", f"more than {MAX_STEPS} daily steps"),
        ("0001-01-01", "9999-12-31", "month", "to", f"more than {MAX_STEPS} monthly steps"),
    ],
)
def test_bad_periods_name_the_field(
    start: str | None, end: str | None, step: str, field: str, reason: str
) -> None:
    with pytest.raises(RejectedError) as info:
        parse_period(start, end, step)
    assert (info.value.path, reason in info.value.reason) == (field, True), info.value
    with pytest.raises(RejectedError) as flagged:
        parse_period(start, end, step, prefix="--")
    assert flagged.value.path == f"--{field}"


# -- assembling and rendering ------------------------------------------------------------------
def _doc(as_of: str, status: str, warnings: list[str]) -> dict[str, Any]:
    checks = [
        {
            "rule": "cap", "kind": "cap", "scope": "country:AE", "status": status,
            "used_tpp": 10, "used_h100e": 0.001, "limit_tpp": 5, "limit_h100e": 0.0,
            "headroom_tpp": -5, "headroom_h100e": -0.0, "source": {}, "note": None,
        },
    ]  # fmt: skip
    ruleset = {"id": "p", "version": "1", "status": "in_force", "in_force": True}
    return {"as_of": as_of, "ruleset": {**ruleset, "warnings": warnings}, "checks": checks}


def test_assemble_counts_breaches_and_folds_dated_warnings() -> None:
    period = parse_period("2025-09-01", "2025-09-03", "day")
    answers = [
        _doc(d, s, [f"p is rescinded on {d} (since x)", "r rests on unconfirmed figures"])
        for d, s in (("2025-09-01", "ok"), ("2025-09-02", "breach"), ("2025-09-03", "breach"))
    ]
    answers[0]["ruleset"]["warnings"].append("p is not yet effective on 2025-09-01")
    got = assemble("country:AE", period, answers)
    assert got["summary"] == {"steps": 3, "breached_steps": 2, "first_breach": "2025-09-02"}
    assert got["warnings"] == [
        "p is rescinded from 2025-09-01 to 2025-09-03 (since x)",
        "r rests on unconfirmed figures",
        "p is not yet effective on 2025-09-01",
    ]
    assert got["ruleset"] == {"id": "p", "version": "1", "status": "in_force", "in_force": True}
    assert list(got["steps"][0]["checks"][0]) == [
        "rule", "scope", "kind", "status", "used_tpp", "limit_tpp", "headroom_tpp",
        "headroom_h100e",
    ]  # fmt: skip
    assert assemble(None, period, answers)["scope"] is None


def test_csv_has_a_header_and_a_row_per_step_and_check(ledger: Ledger) -> None:
    got = report_answer(ledger, ADMIN, None, parse_period("2025-08-30", "2025-09-02", "day"))
    lines = report_csv(got).splitlines()
    assert lines[0] == ",".join(CSV_FIELDS)
    assert len(lines) == 1 + sum(len(s["checks"]) for s in got["steps"])
    assert len(lines) > 1 + len(got["steps"])  # several checks per step
    share = next(line for line in lines if ",uveu_tier2_country_share,entity:acme/" in line)
    assert share.startswith("2025-08-30,")
    assert share.split(",")[CSV_FIELDS.index("limit_tpp")] == ""  # a share rule has no cap


def test_the_table_names_the_period_scope_and_pack_then_a_block_per_check(
    ledger: Ledger, clock: Clock
) -> None:
    ledger.ingest(rep(seq=1, n=100))  # 100 H100 in AE beside 1000 in the US: over 7%
    got = report_answer(ledger, ACME, "entity:acme", parse_period("2025-08-31", "2025-09-01", None))
    text = report_table(got)
    assert "Period report 2025-08-31 to 2025-09-01, by day (2 steps)" in text
    assert "Scope: entity:acme" in text
    assert "Rule pack: us-bis-ai-diffusion-2025 version " in text
    assert "Breached: 1 of 2 steps, first on 2025-09-01" in text
    block = text.split("uveu_tier2_country_share entity:acme/country:AE (max_share)")[1]
    assert block.index("2025-08-31") < block.index("2025-09-01") < block.index("BREACH")
    assert "warning: " in text
    empty = {**got, "steps": [{"as_of": s["as_of"], "checks": []} for s in got["steps"]]}
    assert "no checks visible in this scope" in report_table(empty)


# -- the ledger, in process --------------------------------------------------------------------
@pytest.mark.parametrize("principal", [ADMIN, ACME], ids=["admin", "acme"])
@pytest.mark.parametrize("scope", [None, "entity:acme", "site:acme-ae-1", "country:AE"])
def test_each_step_is_the_headroom_answer_of_its_date(
    ledger: Ledger, principal: Principal, scope: str | None
) -> None:
    from gpucap.ledger.app import headroom_answer

    ledger.ingest(rep(seq=1))
    period = parse_period("2025-05-20", "2025-09-03", "week")  # acme's US line is from June
    got = report_answer(ledger, principal, scope, period)
    assert [s["as_of"] for s in got["steps"]] == [d.isoformat() for d in period.days]
    for step in got["steps"]:
        doc = headroom_answer(ledger, principal, scope, step["as_of"])
        want = [{k: c[k] for k in CHECK_FIELDS if k in c} for c in doc["checks"]]
        assert step["checks"] == want, step["as_of"]
    assert got["ruleset"] == {
        k: doc["ruleset"][k] for k in ("id", "version", "status", "in_force")
    }  # the last step's
    assert (got["scope"], got["from"], got["to"], got["step"]) == (
        scope, "2025-05-20", "2025-09-03", "week",
    )  # fmt: skip
    if scope == "country:AE":
        return
    before, after = got["steps"][0], got["steps"][-1]
    assert check(before, "uveu_us_share", "entity:acme")["used_tpp"] == 0
    assert check(after, "uveu_us_share", "entity:acme")["used_tpp"] == 1000 * H100_TPP


def test_a_device_installed_mid_period_changes_later_steps_only(
    ledger: Ledger, clock: Clock
) -> None:
    ledger.ingest(rep(seq=1, n=8))  # first seen 2025-09-01
    clock.moment = at("2025-09-10T10:00:00")
    ledger.ingest(rep(seq=2, n=100))  # 92 more, first seen 2025-09-10
    got = report_answer(ledger, ADMIN, None, parse_period("2025-09-01", "2025-09-20", "day"))
    used = {s["as_of"]: check(s, *SHARE)["used_tpp"] for s in got["steps"]}
    assert {d for d, u in used.items() if u == 8 * H100_TPP} == {
        f"2025-09-{d:02d}" for d in range(1, 10)
    }
    assert {d for d, u in used.items() if u == 100 * H100_TPP} == {
        f"2025-09-{d:02d}" for d in range(10, 21)
    }
    assert got["summary"] == {"steps": 20, "breached_steps": 11, "first_breach": "2025-09-10"}
    assert check(got["steps"][8], *SHARE)["status"] == "ok"
    assert check(got["steps"][9], *SHARE)["status"] == "breach"


def test_an_entity_token_sees_its_checks_and_is_refused_other_scopes(ledger: Ledger) -> None:
    ledger.ingest(rep(seq=1))
    ledger.ingest(rep(node="n2", site="nimbus-ae-1", seq=1))
    period = parse_period("2025-09-01", "2025-09-02", "day")
    mine = report_answer(ledger, ACME, None, period)
    everything = report_answer(ledger, ADMIN, None, period)
    for got in (mine, everything):
        assert got["steps"][0]["checks"] == got["steps"][1]["checks"]
    index = ledger.view(date(2025, 9, 1)).index
    scopes = {c["scope"] for c in mine["steps"][0]["checks"]}
    assert scopes
    assert all(can_see(s, "acme", index) for s in scopes)
    assert not any("nimbus" in s for s in scopes)
    assert any("nimbus" in c["scope"] for c in everything["steps"][0]["checks"])
    for scope in ("entity:nimbus", "site:nimbus-ae-1"):
        with pytest.raises(AuthError) as info:
            report_answer(ledger, ACME, scope, period)
        assert info.value.status_code == 403
    assert ledger.auth_refusals_total["scope_forbidden"] == 2
    for scope in ("entity:nobody", "site:nowhere", "country:ZZ", "planet:mars"):
        with pytest.raises(RejectedError) as bad:
            report_answer(ledger, ADMIN, scope, period)
        assert bad.value.path == "scope"


def test_building_the_cli_parser_does_not_load_the_web_stack() -> None:
    code = (
        "import sys, gpucap.cli; gpucap.cli.build_parser(); "
        "print(sorted(m for m in ('fastapi', 'starlette', 'sqlalchemy') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--from", "2025-9-1", "--to", "2025-09-02"], "--from"),
        (["--from", "2025-09-01", "--to", "2025-09-31"], "--to"),
        (["--from", "2025-09-03", "--to", "2025-09-02"], "--from"),
        (["--from", "2025-09-01", "--to", "2025-09-02", "--step", "year"], "--step"),
        (["--from", "2000-01-01", "--to", "2025-09-02"], "--to"),
    ],
)
def test_the_command_refuses_bad_flags_with_exit_2(flags: list[str], field: str) -> None:
    proc = gpucap(
        "report", "--ledger", "http://127.0.0.1:1", *flags, env={"GPUCAP_TOKEN": "gpc1.x.y"}
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith(f"gpucap: error: {field}: ")
    assert proc.stdout == ""


# -- a real server -----------------------------------------------------------------------------
def _tokens(db_url: str) -> dict[str, str]:
    store = Store.open(Settings(db_url=db_url))
    made = {
        "n1": ("node", {"node_id": "n1", "site_id": "acme-ae-1"}),
        "admin": ("operator", {"operator": "root"}),
        "acme": ("operator", {"operator": "ops", "entity": "acme"}),
        "auditor": ("auditor", {"auditor": "eve"}),
    }
    try:
        return {
            name: tokens.issue(store, kind, utc_now(), None, **subject)[1]
            for name, (kind, subject) in made.items()
        }
    finally:
        store.close()


@pytest.mark.slow
def test_gpucap_report_against_a_real_server(db_url: str, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    toks = _tokens(db_url)
    today = datetime.now(UTC).date()
    # The server dates a device by the day it is first seen: a period around today holds it.
    start, end = (today - timedelta(days=6)).isoformat(), (today + timedelta(days=1)).isoformat()
    with ledger_server(db_url, registry) as url:

        def get(path: str, token: str, **params: str) -> httpx.Response:
            auth = {"Authorization": f"Bearer {token}"}
            return httpx.get(f"{url}{path}", headers=auth, params=params, timeout=60)

        def post(seq: int, n: int) -> None:
            auth = {"Authorization": f"Bearer {toks['n1']}"}
            r = httpx.post(f"{url}/v1/reports", json=report(seq=seq, n=n), headers=auth)
            assert r.status_code == 200, r.text

        def cli(*flags: str, token: str = toks["acme"]) -> subprocess.CompletedProcess[str]:
            return gpucap(
                "report", "--ledger", url, "--from", start, "--to", end, *flags,
                env={"GPUCAP_TOKEN": token},
            )  # fmt: skip

        post(1, 8)
        ok = cli("--scope", "entity:acme", "--step", "week", "--format", "json")
        assert ok.returncode == 0, ok.stderr
        http = get("/v1/report", toks["acme"], scope="entity:acme", step="week", **{"from": start})
        assert http.status_code == 422
        assert http.json()["detail"] == [{"path": "to", "reason": "required"}]
        params = {"scope": "entity:acme", "from": start, "to": end, "step": "week"}
        answer = get("/v1/report", toks["acme"], **params).json()
        from_cli = json.loads(ok.stdout)
        for doc in (from_cli, answer):  # one record; only the moment each was generated differs
            doc["provenance"].pop("generated_at")
            doc["provenance"].pop("known_at")
        assert from_cli == answer
        assert [s["as_of"] for s in answer["steps"]] == [start, end]
        for step in answer["steps"]:
            doc = get("/v1/headroom", toks["acme"], scope="entity:acme", as_of=step["as_of"])
            want = [{k: c[k] for k in CHECK_FIELDS if k in c} for c in doc.json()["checks"]]
            assert step["checks"] == want

        post(2, 100)  # over acme's 7% in AE from today on
        breach = cli()
        assert breach.returncode == 1, breach.stderr
        assert f"Period report {start} to {end}, by day (8 steps)" in breach.stdout
        assert f"first on {today.isoformat()}" in breach.stdout
        csv_out = cli("--format", "csv", token=toks["auditor"])
        assert csv_out.returncode == 1, csv_out.stderr
        rows = csv_out.stdout.splitlines()
        full = get("/v1/report", toks["auditor"], **{"from": start, "to": end}).json()
        assert rows[0] == ",".join(CSV_FIELDS)
        assert len(rows) == 1 + sum(len(s["checks"]) for s in full["steps"])
        assert full["summary"]["first_breach"] == today.isoformat()

        denied = cli("--scope", "entity:nimbus")
        assert denied.returncode == 3
        assert "HTTP 403: operator token for 'acme' may not see entity:nimbus" in denied.stderr
        assert (
            get("/v1/report", toks["acme"], **{**params, "scope": "entity:nimbus"}).status_code
            == 403
        )
        # An entity-scoped token is refused an unknown scope as it is another entity's (it must
        # not learn what exists); an unscoped one is told the scope names nothing.
        probing = cli("--scope", "entity:nobody")
        assert probing.returncode == 3
        assert "may not see entity:nobody" in probing.stderr
        unknown = cli("--scope", "entity:nobody", token=toks["admin"])
        assert unknown.returncode == 2
        assert unknown.stderr.startswith("gpucap: error: scope: ")
        for bad, field in (
            ({"scope": "entity:nobody"}, "scope"),
            ({"from": "2025-13-01"}, "from"),
            ({"from": end, "to": start}, "from"),
            ({"step": "fortnight"}, "step"),
            ({"from": "1990-01-01", "step": "day"}, "to"),
        ):
            r = get("/v1/report", toks["admin"], **{**params, "scope": "", **bad})
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["detail"][0]["path"] == field, r.text
        assert get("/v1/report", toks["n1"], **params).status_code == 403  # a node token
        assert httpx.get(f"{url}/v1/report", params=params).status_code == 401
        assert "/v1/report" in httpx.get(f"{url}/openapi.json").json()["paths"]
