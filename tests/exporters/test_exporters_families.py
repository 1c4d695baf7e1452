"""The declaration tables and the builder that keeps collect() honest to them."""

from __future__ import annotations

import re

import pytest

from gpucap.exporters.agent import AGENT_METRICS
from gpucap.exporters.families import FamilyBuilder, MetricSpec
from gpucap.exporters.ledger import LEDGER_METRICS

_NAME = re.compile(r"^gpucap_[a-z0-9_]+$")
_LABEL = re.compile(r"^[a-z][a-z0-9_]*$")
_SPECS = [*AGENT_METRICS, *LEDGER_METRICS]


def test_names_are_unique_across_both_exporters() -> None:
    names = [spec.name for spec in _SPECS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("spec", _SPECS, ids=lambda spec: spec.name)
def test_each_declaration_follows_the_naming_conventions(spec: MetricSpec) -> None:
    assert _NAME.match(spec.name)
    assert spec.name.endswith("_total") == (spec.kind == "counter")
    assert spec.help[:1].isupper() or spec.help[:1].isdigit()
    assert spec.help.endswith(".")
    assert all(_LABEL.match(label) for label in spec.labels)
    assert len(spec.labels) <= 6
    # Identity goes on _info series only; ordinary series never carry hosts or serials.
    assert not {"hostname", "host", "serial"} & set(spec.labels)
    if spec.name.endswith("_info"):
        assert spec.kind == "gauge"


def test_the_builder_refuses_a_wrong_label_set() -> None:
    out = FamilyBuilder((MetricSpec("gpucap_x", "gauge", "X.", ("a", "b")),))
    with pytest.raises(ValueError, match=r"gpucap_x: labels \['a'\] != declared \['a', 'b'\]"):
        out.add("gpucap_x", 1, {"a": "1"})


def test_the_builder_refuses_an_undeclared_name() -> None:
    out = FamilyBuilder((MetricSpec("gpucap_x", "gauge", "X."),))
    with pytest.raises(KeyError):
        out.add("gpucap_y", 1)


def test_the_builder_emits_every_declared_family_in_order() -> None:
    specs = (MetricSpec("gpucap_b", "gauge", "B."), MetricSpec("gpucap_a_total", "counter", "A."))
    out = FamilyBuilder(specs)
    out.add("gpucap_a_total", 2)
    families = out.families()
    assert [f.name for f in families] == ["gpucap_b", "gpucap_a"]
    assert families[0].samples == []
    assert [(s.name, s.value) for s in families[1].samples] == [("gpucap_a_total", 2)]
