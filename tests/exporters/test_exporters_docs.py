"""docs/exporters.md lists every declared metric with its type and labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpucap.exporters.agent import AGENT_METRICS
from gpucap.exporters.families import MetricSpec
from gpucap.exporters.ledger import LEDGER_METRICS

DOC = Path(__file__).resolve().parents[2] / "docs" / "exporters.md"


@pytest.mark.parametrize("spec", [*AGENT_METRICS, *LEDGER_METRICS], ids=lambda s: s.name)
def test_each_metric_has_a_row(spec: MetricSpec) -> None:
    labels = ", ".join(f"`{label}`" for label in spec.labels) or "none"
    row = f"| `{spec.name}` | {spec.kind} | {labels} | {spec.help} |"
    assert row in DOC.read_text().splitlines()
