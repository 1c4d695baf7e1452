"""The classification function at its thresholds, and the catalogue's computed classes."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from gpucap.core.catalogue import default_catalogue, load_catalogue
from gpucap.core.classify import INDETERMINATE, classify, default_thresholds, parse_thresholds
from gpucap.core.errors import DataError

T = default_thresholds()


@pytest.mark.parametrize(
    ("tpp", "area", "datacenter", "expected"),
    [
        (4800, None, False, ("3A090.a", "3A090.a.1")),  # a.1 needs no density, any market
        (4799, 1000, False, ("not_controlled", None)),  # non-datacenter: only a.1 applies
        (1600, Fraction(1600) / Fraction("5.92"), True, ("3A090.a", "3A090.a.2")),  # PD = 5.92
        (1599, 100, True, ("not_controlled", None)),
        (2400, 1500, True, ("3A090.b", "3A090.b.1")),  # PD 1.6 exactly
        (2399, 1499, True, ("not_controlled", None)),  # PD just over 1.6 but TPP < 2400, < 3.2
        (1600, 500, True, ("3A090.b", "3A090.b.2")),  # PD 3.2 exactly
        (2000, Fraction(2000) / Fraction("3.2") + 1, True, ("not_controlled", None)),  # A10-like
        (2000, None, True, (INDETERMINATE, None)),  # density would decide, area unknown
    ],
)
def test_threshold_boundaries(
    tpp: int, area: Fraction | None, datacenter: bool, expected: tuple[str, str | None]
) -> None:
    got = classify(tpp, area, datacenter, T)
    assert (got.eccn_class, got.paragraph) == expected


@pytest.mark.parametrize(
    ("model", "eccn_class"),
    [
        ("h100-sxm5-80gb", "3A090.a"),
        ("h20-96gb", "not_controlled"),  # TPP 2,368 < 2,400 and PD 2.91 < 3.2
        ("l4-24gb", "3A090.a"),  # a.2 through density 6.59
        ("l40-48gb", "3A090.b"),
        ("a10-24gb", "not_controlled"),  # PD 3.18, just under b.2
        ("geforce-rtx-4090", "3A090.a"),
        ("geforce-rtx-4090-d", "not_controlled"),  # non-datacenter under 4,800
        ("mi300x", "3A090.a"),  # no die area needed above 4,800
    ],
)
def test_catalogue_classes_are_computed(model: str, eccn_class: str) -> None:
    acc = default_catalogue().get(model)
    assert acc is not None
    assert acc.eccn_class == eccn_class


def test_matching_by_pci_id_then_name() -> None:
    cat = default_catalogue()

    def matched(*args: object, **kw: int) -> str | None:
        acc = cat.match(*args, **kw)  # type: ignore[arg-type]  # the table's mixed argument types
        return None if acc is None else acc.id

    assert matched(0x2330, "something else") == "h100-sxm5-80gb"
    assert matched(0xFFFF, "NVIDIA H100 80GB HBM3") == "h100-sxm5-80gb"
    assert matched(None, "nvidia  a100-sxm4-80gb") == "a100-sxm4-80gb"
    assert matched(0x74A1, None, pci_vendor_id=0x1002) == "mi300x"
    assert cat.match(0x74A1, None) is None  # same device id, NVIDIA vendor: not an MI300X
    assert cat.match(0xFFFF, "Mystery Accelerator") is None
    assert cat.h100e(15832 * 3) == 3


def test_catalogue_models_have_provenance() -> None:
    for acc in default_catalogue().accelerators:
        assert acc.source
        assert acc.confidence in {"primary", "secondary", "derived", "unconfirmed"}


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        ({"tpp": -1}, "accelerators[0].tpp: expected a positive integer"),
        ({"pci_device_ids": ["zz"]}, "accelerators[0].pci_device_ids[0]: expected a hexadecimal"),
        ({"datacenter": "yes"}, "accelerators[0].datacenter: expected true or false"),
    ],
)
def test_invalid_catalogue_names_the_field(
    tmp_path: Path, mutation: dict[str, object], message: str
) -> None:
    import yaml

    from gpucap.core.data import shipped

    doc = yaml.safe_load(shipped("catalogue.yaml").read_text())
    doc["accelerators"][0].update(mutation)
    path = tmp_path / "cat.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_catalogue(path)


def test_invalid_thresholds() -> None:
    with pytest.raises(DataError, match=r"paragraphs\[0\]\.tpp_min: expected a number"):
        parse_thresholds({"paragraphs": [{"paragraph": "x", "class": "y", "tpp_min": "lots"}]})
