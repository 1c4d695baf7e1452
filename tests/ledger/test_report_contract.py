"""The report contract, both ways: the ledger accepts every report the agent builds and the
schema allows, and refuses (422 with the field path, nothing written) what the schema forbids."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from pydantic import ValidationError

from gpucap.agent.fake_machine import FakeMachine
from gpucap.agent.inventory import build_inventory
from gpucap.agent.nvml_fake import FakeBackend
from gpucap.agent.report import build_report
from gpucap.agent.scenario import load_scenario, shipped_scenarios
from gpucap.core.catalogue import default_catalogue
from gpucap.ledger import tokens
from gpucap.ledger.fold import resolve
from gpucap.ledger.models import Report, loc_path
from gpucap.ledger.settings import Settings, utc_now
from gpucap.ledger.store import Store
from tests.ledger.support import ledger_server, log_kinds, report

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


# -- two-way contract: what the schema forbids, the ledger refuses (422, a path, nothing written)

_SAMPLES: dict[str, Any] = {  # one value of every JSON type
    "string": "x",
    "integer": 7,
    "number": 1.5,
    "boolean": True,
    "null": None,
    "array": [],
    "object": {},
}
# Values that break each pattern (the schema's regexes), beside the generic ones below.
_BAD_PATTERNS: dict[str, list[str]] = {
    "collected_at": [
        "2025-09-01T12:00:00+02:00",
        "2025-09-01T05:00:00-05:00",
        "2025-09-01T10:00:00",
        "2025-09-01 10:00:00Z",
        "2025-09-01T10:00Z",
        "2025-09-01T10:00:00.1234567890Z",
        "2025-09-01T10:00:00.Z",
        "2025-09-01",
    ],
    "pci_device_id": ["2330", "0x233", "0x23300", "0xg330", "0x 233"],
    "pci_subsystem_id": ["0x16c1", "0x16c110de0", "16c110de", "0x16c110dg"],
}
# Control characters the schema and the ledger both refuse in every other string.
_CONTROL = ["\x00", "\x1f", "a\nb", "\t"]


def _mutations(
    schema: dict[str, Any], value: dict[str, Any], prefix: str
) -> list[tuple[str, str, Any]]:
    """(label, path, mutated object) for one object of the schema: each property missing, of
    every other JSON type, off its pattern, enum, const, minimum or length; an extra one."""
    out: list[tuple[str, str, Any]] = [("extra", f"{prefix}bogus", {**value, "bogus": 1})]
    for name, prop in schema["properties"].items():
        path = f"{prefix}{name}"

        def put(new: Any, name: str = name) -> dict[str, Any]:
            return {**value, name: new}

        if name in schema.get("required", ()):
            out.append(("missing", path, {k: v for k, v in value.items() if k != name}))
        for kind, sample in _SAMPLES.items():
            out.append((f"type {kind}", path, put(sample)))
        for bad in _BAD_PATTERNS.get(name, ()):
            out.append((f"pattern {bad!r}", path, put(bad)))
        if prop.get("pattern", "").startswith("^[^"):  # the no-control-character pattern
            for bad in _CONTROL:
                out.append((f"control {bad!r}", path, put(f"GPU{bad}x")))
        if "enum" in prop:
            for bad in ("OK", "weird", "", prop["enum"][0] + " "):
                out.append((f"enum {bad!r}", path, put(bad)))
        if "const" in prop:
            out.append(("const", path, put(prop["const"].replace("v1", "v2"))))
        if "minimum" in prop:
            out.append(("minimum", path, put(prop["minimum"] - 1)))
            out.append(("minimum", path, put(prop["minimum"] - 0.5)))
        if prop.get("minLength") == 1:
            out.append(("minLength", path, put("")))
        if "maxLength" in prop:
            out.append(("maxLength", path, put("x" * (prop["maxLength"] + 1))))
    return out


def _all_mutations() -> list[tuple[str, str, dict[str, Any]]]:
    schema = _schema()
    base = report(seq=3, n=1)
    out = _mutations(schema, base, "")
    dev = base["devices"][0]
    for label, path, mutated in _mutations(schema["$defs"]["device"], dev, "devices[0]."):
        out.append((label, path, {**base, "devices": [mutated]}))
    return out


@pytest.mark.slow
def test_every_mutation_the_schema_forbids_is_refused_by_the_ledger(
    db_url: str, registry_file: Path
) -> None:
    """Two-way on every generated mutation: jsonschema rejects it exactly when the ledger answers
    422 naming the field (and nothing is written); the mutations it allows are accepted."""
    store = Store.open(Settings(db_url=db_url))
    try:
        _, token = tokens.issue(store, "node", utc_now(), None, node_id="n1", site_id="acme-ae-1")
    finally:
        store.close()
    validator = jsonschema.Draft202012Validator(_schema())
    mutations = _all_mutations()
    refused = 0
    allowed = []
    with (
        ledger_server(db_url, registry_file) as url,
        httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client,
    ):
        for label, path, body in mutations:
            if validator.is_valid(body):
                allowed.append((label, path, body))
                continue
            refused += 1
            r = client.post("/v1/reports", json=body)
            assert r.status_code == 422, (path, label, r.text)
            paths = [d["path"] for d in r.json()["detail"]]
            assert path in paths, (path, label, paths)
        assert _event_kinds(db_url) == ["registry"]  # nothing written
        # What the schema allows among them (a nullable field set to null, an integer where a
        # number goes) the ledger accepts too: one report per mutation, each with a new seq
        # (another node or site id is valid, but not for this node's token).
        for seq, (label, path, body) in enumerate(allowed, start=10):
            Report.model_validate_json(json.dumps(body))
            if path in ("node_id", "site_id"):
                continue
            r = client.post("/v1/reports", json={**body, "seq": seq})
            assert r.json() == {"status": "accepted", "seq": seq}, (path, label, r.text)
    assert refused > 190  # the generator really produced the forbidden cases
    assert ("type null", "devices[0].pci_device_id") in [(a[0], a[1]) for a in allowed]


def _event_kinds(db_url: str) -> list[str]:
    return log_kinds(db_url)


SIZE_BOUNDS = [
    ("devices[0].uuid", "G" * 129),
    ("devices[0].serial", "S" * 129),
    ("devices[0].name", "N" * 257),
    ("agent_version", "v" * 129),
    ("seq", 2**63),
    ("devices[0].memory_total_bytes", 2**63),
]


def _with(path: str, value: Any) -> dict[str, Any]:
    body = report(seq=3, n=1)
    if path.startswith("devices[0]."):
        body["devices"][0][path.removeprefix("devices[0].")] = value
    else:
        body[path] = value
    return body


@pytest.mark.parametrize(("path", "value"), SIZE_BOUNDS)
def test_size_bounds_are_in_the_schema_and_the_ledger(path: str, value: Any) -> None:
    body = _with(path, value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, _schema())
    with pytest.raises(ValidationError) as info:
        Report.model_validate_json(json.dumps(body))
    assert loc_path(info.value.errors()[0]["loc"]) == path


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("collected_at", "2025-02-30T10:00:00Z"),
        ("collected_at", "2025-09-01T24:00:00Z"),
    ],
)
def test_the_ledger_bounds_beyond_the_schema(path: str, value: Any) -> None:
    """The only reports the schema allows and the ledger refuses: LEDGER_BOUNDS."""
    body = _with(path, value)
    jsonschema.validate(body, _schema())
    with pytest.raises(ValidationError) as info:
        Report.model_validate_json(json.dumps(body))
    assert loc_path(info.value.errors()[0]["loc"]) == path


def test_the_agents_placeholder_uuid_for_a_lost_gpu_is_accepted() -> None:
    """`GPU-unknown-<node>-index-N`, even for the longest node id the agent shortens."""
    from gpucap.agent.inventory import placeholder_uuid

    for node in ("node-1.example", "n" * 256):
        body = report(seq=3, n=1)
        body["devices"][0]["uuid"] = placeholder_uuid(node, 7)
        jsonschema.validate(body, _schema())
        Report.model_validate_json(json.dumps(body))


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2026-12-01T06:20:00Z", "2026-12-01T06:20:00Z"),
        ("2026-12-01T06:20:00+00:00", "2026-12-01T06:20:00Z"),
        ("2026-12-01T06:20:00-00:00", "2026-12-01T06:20:00Z"),
        ("2026-12-01t06:20:00z", "2026-12-01T06:20:00Z"),
        ("2026-12-01T06:20:00.123456789+00:00", "2026-12-01T06:20:00.123456789Z"),
    ],
)
def test_every_rfc3339_utc_form_is_accepted_and_normalised(given: str, stored: str) -> None:
    body = _with("collected_at", given)
    jsonschema.validate(body, _schema())
    assert Report.model_validate_json(json.dumps(body)).collected_at == stored


def test_other_offsets_are_refused_with_a_sentence() -> None:
    with pytest.raises(ValidationError) as info:
        Report.model_validate_json(json.dumps(_with("collected_at", "2026-12-01T08:20:00+02:00")))
    message = info.value.errors()[0]["msg"]
    assert "is not in UTC" in message
    assert "pattern" not in message


def test_uppercase_pci_ids_are_accepted_and_stored_lowercase() -> None:
    body = _with("devices[0].pci_device_id", "0X233A")
    body["devices"][0]["pci_subsystem_id"] = "0x16C110DE"
    jsonschema.validate(body, _schema())
    device = Report.model_validate_json(json.dumps(body)).devices[0]
    assert device.pci_device_id == "0x233a"
    assert device.pci_subsystem_id == "0x16c110de"


@pytest.mark.parametrize("path", ["devices[0].uuid", "devices[0].name", "agent_version", "node_id"])
def test_control_characters_are_refused_naming_the_field(path: str) -> None:
    with pytest.raises(ValidationError) as info:
        Report.model_validate_json(json.dumps(_with(path, "GPU-\x00-1")))
    error = info.value.errors()[0]
    assert loc_path(error["loc"]) == path
    assert "control character U+0000 at position 4" in error["msg"]
