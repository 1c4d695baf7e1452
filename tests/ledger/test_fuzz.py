"""A bounded schemathesis run against a real `gpucap ledger serve` (drills/fuzz.py): every
operation, valid and schema-breaking cases, real node, operator, entity-scoped operator,
auditor and metrics tokens; it must end with no 5xx and no schema violation.

`python -m drills.fuzz --max-examples N --seconds S` is the long run.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import schemathesis

from drills import fuzz

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 25  # per operation and mode: about half a minute on two loaded cores


@pytest.fixture(scope="module")
def served() -> Iterator[fuzz.Served]:
    with fuzz.serve() as running:
        yield running


def test_the_fuzzer_finds_no_server_error_and_no_schema_violation(served: fuzz.Served) -> None:
    tally = fuzz.fuzz(served, MAX_EXAMPLES)
    print(tally.summary())
    described = {op.ok().label for op in fuzz.load(served.url).get_all_operations()}
    assert set(tally.requests) == described
    assert tally.server_errors == []
    assert tally.violations == []
    # The run reached past the refusals: answers, and each refusal kind, were seen.
    seen = {status for statuses in tally.statuses.values() for status in statuses}
    assert {200, 401, 403, 422} <= seen, seen
    answered = {label for label, statuses in tally.statuses.items() if statuses[200]}
    assert len(answered) >= len(described) // 2, answered


def test_the_fuzzer_reports_an_answer_off_the_description(served: fuzz.Served) -> None:
    """The same run against a description that is wrong in one place reports it."""
    doc = copy.deepcopy(fuzz.load(served.url).raw_schema)
    healthz = doc["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]
    healthz["schema"] = {"type": "object", "required": ["uptime_s"]}
    wrong = schemathesis.openapi.from_dict(doc, config=fuzz.config()).include(path="/healthz")
    tally = fuzz.fuzz(served, 3, schema=wrong)
    assert set(tally.requests) == {"GET /healthz"}
    assert tally.violations, tally.summary()
    assert all("GET /healthz" in v for v in tally.violations)


def test_the_fuzzer_reports_a_route_that_ignores_its_credential(served: fuzz.Served) -> None:
    """A description that says a public route needs a node token: the run sends it without
    one, is answered 200, and says so."""
    doc = copy.deepcopy(fuzz.load(served.url).raw_schema)
    healthz = doc["paths"]["/healthz"]["get"]
    healthz["security"] = [{"nodeToken": []}]
    healthz["responses"]["401"] = doc["paths"]["/v1/reports"]["post"]["responses"]["401"]
    wrong = schemathesis.openapi.from_dict(doc, config=fuzz.config()).include(path="/healthz")
    tally = fuzz.fuzz(served, 3, schema=wrong)
    assert any("accepts requests without authentication" in v for v in tally.violations), (
        tally.summary()
    )


def test_a_server_error_is_counted() -> None:
    tally = fuzz.Tally()
    tally.saw("GET /x", 200)
    tally.saw("GET /x", 503)
    assert tally.server_errors == ["GET /x: 503"]
    assert "server errors 1" in tally.summary()
