"""Metric declarations and the family builder both exporters share.

Each exporter declares its metrics once, as a tuple of `MetricSpec`; `describe()` and `collect()`
both build from that table, so a name, a help text or a label set cannot drift between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

Kind = Literal["gauge", "counter"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric: full exposed name (counters end in `_total`), type, help and label names."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()


def empty_family(spec: MetricSpec) -> Metric:
    """A family with no samples: what `describe()` yields and what `collect()` fills."""
    if spec.kind == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


def describe_all(specs: Iterable[MetricSpec]) -> Iterator[Metric]:
    """Yield one empty family per declared metric, for a registry's `describe()`."""
    for spec in specs:
        yield empty_family(spec)


class FamilyBuilder:
    """Accumulates samples for a declared table; refuses undeclared names and wrong label sets.

    Families are emitted in declaration order, and every declared family is emitted (possibly
    without samples), so the exposition's shape does not depend on the snapshot's contents.
    """

    def __init__(self, specs: Iterable[MetricSpec]) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self._families: dict[str, Metric] = {
            name: empty_family(spec) for name, spec in self._specs.items()
        }

    def add(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """Add one sample; `labels` must name exactly the declared label set."""
        spec = self._specs[name]
        given = dict(labels or {})
        if set(given) != set(spec.labels):
            raise ValueError(f"{name}: labels {sorted(given)} != declared {sorted(spec.labels)}")
        family = self._families[name]
        assert isinstance(family, GaugeMetricFamily | CounterMetricFamily)
        family.add_metric([given[label] for label in spec.labels], value)

    def families(self) -> list[Metric]:
        """The families in declaration order."""
        return list(self._families.values())
