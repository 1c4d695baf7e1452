"""Fuzz a real `gpucap ledger serve` from its own `/openapi.json` with schemathesis.

Every operation is called with cases generated from the document, valid ones (positive) and
ones that break it (negative), each with a real token of a kind the operation accepts (a node
token for reports; an operator, an entity-scoped operator or an auditor for reads; the metrics
token for `/metrics`). Every response goes through schemathesis' checks: no 5xx, the status,
content type, headers and body as documented, negative data refused, and a request without its
credential refused. `positive_data_acceptance` is left out: a valid-looking request may still
be refused for what a schema cannot say (a site not in the registry, another node's report, a
`from` after `to`), and those refusals are documented statuses.

    python -m drills.fuzz --max-examples 200 --seconds 600

runs rounds (a new seed each) until `--seconds` have passed and exits 1 on any server error or
schema violation. `tests/ledger/test_fuzz.py` runs one short round.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi import checks as openapi_checks

from drills.common import REGISTRY, LedgerProc, issue_token, verify, workdir
from gpucap.ledger.openapi import AUDITOR, METRICS, NODE, OPERATOR

METRICS_TOKEN = "fuzz-metrics-token-0123456789"  # noqa: S105 (a drill's throwaway secret)
CHECKS = [
    not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.negative_data_rejection,
    openapi_checks.missing_required_header,
    openapi_checks.ignored_auth,
]
# A schema-breaking request is refused with one of these: 413 and 415 are the body limits.
REJECTED = ["400", "401", "403", "404", "413", "415", "422"]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


@dataclass(frozen=True)
class Served:
    """A running ledger and one token of each kind, by security scheme (readers: three)."""

    url: str
    node: str
    readers: tuple[str, ...]
    metrics: str
    db_url: str

    def tokens_for(self, schemes: list[str]) -> tuple[str | None, ...]:
        """The tokens to try an operation with: those of every scheme it accepts."""
        out: list[str | None] = []
        for scheme in schemes:
            if scheme == NODE:
                out.append(self.node)
            elif scheme == METRICS:
                out.append(self.metrics)
            elif scheme in (OPERATOR, AUDITOR):
                out.extend(t for t in self.readers if t not in out)
        return tuple(out) or (None,)


@dataclass
class Tally:
    """What a run did: requests and statuses per operation, and each problem found."""

    requests: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def saw(self, label: str, status: int) -> None:
        self.requests[label] += 1
        self.statuses.setdefault(label, Counter())[status] += 1
        if status >= 500:
            self.server_errors.append(f"{label}: {status}")

    def summary(self) -> str:
        lines = []
        for label in sorted(self.requests):
            seen = ", ".join(f"{s}x{n}" for s, n in sorted(self.statuses[label].items()))
            lines.append(f"  {label:<32} {self.requests[label]:>6}  {seen}")
        lines.append(
            f"requests {sum(self.requests.values())}, server errors {len(self.server_errors)}, "
            f"schema violations {len(self.violations)}"
        )
        lines += [f"  5xx: {e}" for e in self.server_errors[:20]]
        lines += [f"  violation: {v}" for v in self.violations[:20]]
        return "\n".join(lines)


@contextmanager
def serve() -> Iterator[Served]:
    """`gpucap ledger serve` on SQLite in a temporary directory, with the metrics token set,
    and one token of each kind issued by `gpucap ledger token`."""
    with workdir("fuzz") as root:
        registry = root / "registry.yaml"
        registry.write_text(REGISTRY, encoding="utf-8")
        db_url = f"sqlite:///{root / 'ledger.db'}"
        ledger = LedgerProc(
            "ledger", root, db_url, registry, {"GPUCAP_METRICS_TOKEN": METRICS_TOKEN}
        )
        ledger.start_ready()
        try:
            yield Served(
                url=ledger.url,
                node=issue_token(db_url, "--node", "n1", "--site", "acme-us-1"),
                readers=(
                    issue_token(db_url, "--operator", "root"),
                    issue_token(db_url, "--operator", "ops", "--entity", "acme"),
                    issue_token(db_url, "--auditor", "aud"),
                ),
                metrics=METRICS_TOKEN,
                db_url=db_url,
            )
        finally:
            ledger.stop()


def config() -> schemathesis.Config:
    """The checks' settings: a schema-breaking request may be refused for its size or type."""
    return schemathesis.Config.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": REJECTED}}}
    )


def load(url: str) -> Any:
    """The served `/openapi.json` as schemathesis reads it."""
    return schemathesis.openapi.from_url(f"{url}/openapi.json", config=config())


def fuzz(
    served: Served,
    max_examples: int,
    seed: int = 0,
    tally: Tally | None = None,
    schema: Any = None,
) -> Tally:
    """One round: `max_examples` cases per operation and mode, each checked; the tally.
    `schema` (a loaded schemathesis schema) replaces the one the ledger serves."""
    tally = tally if tally is not None else Tally()
    schema = schema if schema is not None else load(served.url)
    for result in schema.get_all_operations():
        operation = result.ok()
        schemes = [name for alt in operation.definition.raw.get("security", []) for name in alt]
        for mode in MODES:
            _round(operation, mode, served, schemes, max_examples, seed, tally)
    return tally


def _round(
    operation: Any,
    mode: schemathesis.GenerationMode,
    served: Served,
    schemes: list[str],
    max_examples: int,
    seed: int,
    tally: Tally,
) -> None:
    label = operation.label

    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        phases=[hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(
        case=operation.as_strategy(generation_mode=mode),
        token=st.sampled_from(served.tokens_for(schemes)),
    )
    def run(case: Any, token: str | None) -> None:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        response = case.call(base_url=served.url, headers=headers, timeout=60)
        tally.saw(label, response.status_code)
        try:
            case.validate_response(
                response,
                checks=CHECKS,
                headers=headers,
                transport_kwargs={"base_url": served.url, "headers": headers, "timeout": 60},
            )
        except FailureGroup as group:
            sent = case.as_curl_command()  # without the token
            for failure in group.exceptions:
                tally.violations.append(
                    f"{label} [{mode.value}]: {failure.title}\n{failure}\n{sent}"
                )

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        if mode is schemathesis.GenerationMode.POSITIVE:
            raise
        # Nothing of the operation can break its schema (no parameters, no body).


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drills.fuzz", description=__doc__)
    parser.add_argument("--max-examples", type=int, default=100, help="per operation and mode")
    parser.add_argument(
        "--seconds", type=float, default=300, help="start rounds until this long has passed"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    tally = Tally()
    rounds = 0
    with serve() as served:
        while rounds == 0 or time.monotonic() - started < args.seconds:
            fuzz(served, args.max_examples, seed=rounds, tally=tally)
            rounds += 1
        clean, said = verify(served.db_url)  # what the fuzzing stored still verifies
    print(f"== drill fuzz: {rounds} rounds in {time.monotonic() - started:.0f} s")
    print(tally.summary())
    print(f"  verify: {'clean' if clean else 'FAILED'}: {said}")
    return 1 if tally.server_errors or tally.violations or not clean else 0


if __name__ == "__main__":
    sys.exit(main())
