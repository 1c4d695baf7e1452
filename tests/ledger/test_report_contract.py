"""The ledger's strict models accept every report the agent builds and the schema allows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gpucap.agent.fake_machine import FakeMachine
from gpucap.agent.inventory import build_inventory
from gpucap.agent.nvml_fake import FakeBackend
from gpucap.agent.report import build_report
from gpucap.agent.scenario import load_scenario, shipped_scenarios
from gpucap.core.catalogue import default_catalogue
from gpucap.ledger.fold import resolve
from gpucap.ledger.models import Report
from tests.ledger.support import report

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "report-v1.schema.json"


def _schema() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(SCHEMA.read_text(encoding="utf-8"))
    return doc


def test_the_test_report_satisfies_the_schema() -> None:
    jsonschema.validate(report(seq=3), _schema())
    Report.model_validate_json(json.dumps(report(seq=3)))


@pytest.mark.parametrize("scenario", sorted(set(shipped_scenarios()) - {"nvml-hang"}))
def test_agent_reports_from_every_scenario_are_accepted(scenario: str) -> None:
    backend = FakeBackend(FakeMachine(load_scenario(scenario)), timeout_seconds=5.0)
    try:
        readings = [backend.read() for _ in range(4)]
    finally:
        backend.close()
    catalogue = default_catalogue()
    for seq, reading in enumerate(readings, start=1):
        doc = build_report(
            build_inventory(reading, catalogue),
            node_id="node-1.example",
            site_id="site-1",
            seq=seq,
            collected_at=datetime(2026, 1, 5, 10, 0, tzinfo=UTC),
            agent_version="0.1.0",
        )
        jsonschema.validate(doc, _schema())
        parsed = Report.model_validate_json(json.dumps(doc))
        for dev, raw in zip(parsed.devices, doc["devices"], strict=True):
            facts = resolve(dev, catalogue)
            assert facts.model == raw["model"], (scenario, raw)
            assert not facts.tpp_mismatch, (scenario, raw)
