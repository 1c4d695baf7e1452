"""The shipped catalogue: bandwidth figures, licence-relevant models, the reader's checks."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from gpucap.cli import main
from gpucap.core.catalogue import CONFIDENCE_LABELS, default_catalogue, parse_catalogue
from gpucap.core.classify import default_thresholds
from gpucap.core.data import read_yaml, shipped
from gpucap.core.errors import DataError

HUAWEI_PCI_VENDOR_ID = 0x19E5


def _doc() -> dict[str, Any]:
    doc = read_yaml(shipped("catalogue.yaml"))
    assert isinstance(doc, dict)
    return copy.deepcopy(doc)


def test_every_model_with_a_bandwidth_has_its_own_source_and_confidence() -> None:
    with_bandwidth = [a for a in default_catalogue().accelerators if a.memory_bandwidth_gbps]
    assert len(with_bandwidth) >= 25
    for acc in with_bandwidth:
        assert acc.memory_bandwidth_source, acc.id
        assert acc.memory_bandwidth_confidence in CONFIDENCE_LABELS, acc.id
    for acc in default_catalogue().accelerators:
        if acc.memory_bandwidth_gbps is None:
            assert (acc.memory_bandwidth_source, acc.memory_bandwidth_confidence) == (None, None)


@pytest.mark.parametrize(
    ("model", "gbps"),
    [
        ("h100-sxm5-80gb", 3350),
        ("h200-sxm-141gb", 4800),
        ("mi325x", 6000),
        ("b200-sxm-180gb", 8000),
        ("gb300-gpu", 8000),
    ],
)
def test_bandwidths_the_china_rule_and_tariff_bands_are_written_around(
    model: str, gbps: int
) -> None:
    acc = default_catalogue().get(model)
    assert acc is not None
    assert acc.memory_bandwidth_gbps == gbps


def test_gb300_resolves_by_id_and_pci_id() -> None:
    cat = default_catalogue()
    gb300 = cat.get("gb300-gpu")
    assert gb300 is not None
    assert cat.match(0x31C2, None) is gb300
    assert (gb300.tpp, gb300.eccn_class) == (60000, "3A090.a")
    assert gb300.confidence == "secondary"
    b300 = cat.get("b300-sxm6")
    assert b300 is not None
    assert b300.tpp < gb300.tpp


@pytest.mark.parametrize("model", ["ascend-910b", "ascend-910c", "ascend-910d"])
def test_ascend_models_resolve_as_prc_3a090_parts_with_weak_figures(model: str) -> None:
    acc = default_catalogue().get(model)
    assert acc is not None
    assert acc.vendor == "Huawei"
    assert acc.pci_vendor_id == HUAWEI_PCI_VENDOR_ID
    assert acc.eccn_class == "3A090.a"
    assert acc.confidence == "unconfirmed"
    assert acc.memory_bandwidth_gbps is None  # not published in any source found


def test_catalogue_json_carries_bandwidth_and_its_provenance(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["catalogue", "--format", "json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    h200 = rows["h200-sxm-141gb"]
    assert h200["memory_bandwidth_gbps"] == 4800
    assert h200["memory_bandwidth_source"].startswith("S24")
    assert h200["memory_bandwidth_confidence"] == "secondary"
    assert rows["ascend-910d"]["memory_bandwidth_gbps"] is None


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"memory_bandwidth_source": None}, "memory_bandwidth_source", "non-empty string"),
        ({"memory_bandwidth_confidence": None}, "memory_bandwidth_confidence", "non-empty"),
        ({"memory_bandwidth_confidence": "likely"}, "memory_bandwidth_confidence", "primary"),
        ({"memory_bandwidth_gbps": 0}, "memory_bandwidth_gbps", "positive number"),
        ({"memory_bandwidth_gbps": "3.35 TB/s"}, "memory_bandwidth_gbps", "positive number"),
        ({"memory_bandwidth_gbps": True}, "memory_bandwidth_gbps", "positive number"),
        ({"memory_bandwidth_gbps": None}, "memory_bandwidth_source", "without memory_bandwidth"),
    ],
)
def test_reader_refuses_a_bandwidth_without_provenance_and_vice_versa(
    change: dict[str, Any], field: str, reason: str
) -> None:
    doc = _doc()
    row = doc["accelerators"][0]
    assert row["id"] == "h100-sxm5-80gb"
    assert "memory_bandwidth_gbps" in row
    for key, value in change.items():
        if value is None:
            del row[key]
        else:
            row[key] = value
    with pytest.raises(DataError) as caught:
        parse_catalogue(doc, default_thresholds(), "cat")
    assert caught.value.path == f"cat.accelerators[0].{field}"
    assert reason in caught.value.reason


def test_a_model_without_bandwidth_is_valid() -> None:
    doc = _doc()
    row = doc["accelerators"][0]
    for key in ("memory_bandwidth_gbps", "memory_bandwidth_source", "memory_bandwidth_confidence"):
        del row[key]
    acc = parse_catalogue(doc, default_thresholds(), "cat").get("h100-sxm5-80gb")
    assert acc is not None
    assert acc.memory_bandwidth_gbps is None
