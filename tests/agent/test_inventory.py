"""Inventory identity: a GPU lost before its UUID was read gets a placeholder unique per node."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gpucap.agent.inventory import (
    FLAG_IDENTITY_UNKNOWN,
    MAX_UUID_CHARS,
    build_inventory,
    placeholder_uuid,
)
from gpucap.agent.report import build_report
from gpucap.agent.scenario import scenario_path
from gpucap.core.catalogue import default_catalogue
from gpucap.core.data import read_yaml

from .conftest import make_backend


def _lost_from_the_start(tmp_path: Path) -> str:
    """dgx-h100 with GPU 3 off the bus before the first collection: its UUID is never read."""
    doc = read_yaml(scenario_path("dgx-h100"))
    doc["events"] = [{"after_collections": 0, "lose": 3}]
    path = tmp_path / "lost-before-first-read.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _report(kind: str, scenario: str, node_id: str) -> dict[str, Any]:
    backend = make_backend(kind, scenario)
    try:
        reading = backend.read()
    finally:
        backend.close()
    inventory = build_inventory(reading, default_catalogue(), node_id=node_id)
    (lost,) = [d for d in inventory.devices if d.state == "lost"]
    assert FLAG_IDENTITY_UNKNOWN in lost.flags
    return build_report(
        inventory,
        node_id=node_id,
        site_id="site-a",
        seq=1,
        collected_at=datetime(2026, 1, 1, tzinfo=UTC),
        agent_version="0",
    )


@pytest.mark.parametrize("kind", ["fake", "real"])
def test_unknown_lost_gpus_on_two_nodes_get_different_uuids(
    tmp_path: Path, kind: str, report_schema: dict[str, Any]
) -> None:
    scenario = _lost_from_the_start(tmp_path)
    uuids = {}
    for node in ("node-a", "node-b"):
        report = _report(kind, scenario, node)
        jsonschema.validate(json.loads(json.dumps(report)), report_schema)
        (lost,) = [d for d in report["devices"] if d["state"] == "lost"]
        uuids[node] = lost["uuid"]
    assert uuids == {"node-a": "GPU-unknown-node-a-index-3", "node-b": "GPU-unknown-node-b-index-3"}


def test_placeholder_fits_the_ledger_for_the_longest_node_ids() -> None:
    longest = "n" * 256  # the schema's and the ledger's bound on node_id
    a = placeholder_uuid(longest, 1023)
    b = placeholder_uuid(longest[:-1] + "m", 1023)  # the same 40-character prefix
    assert len(a) <= MAX_UUID_CHARS
    assert len(b) <= MAX_UUID_CHARS
    assert a != b
    assert a.startswith("GPU-unknown-" + "n" * 40 + "-")
    assert a.endswith("-index-1023")
    assert placeholder_uuid("x" * 100, 7) == "GPU-unknown-" + "x" * 100 + "-index-7"  # fits
    assert placeholder_uuid(None, 7) == "GPU-unknown-index-7"  # a local listing, not a report
