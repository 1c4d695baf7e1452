"""Shared helpers for the exporter tests: parsing, scraping and promtool.

A plain module (not a conftest) with a name unique across tests/, imported by the tests beside it.
"""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.promtest import promtool


def parse(text: str) -> dict[str, Metric]:
    """Parse an exposition into families keyed by family name (counters lose `_total`)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(families: dict[str, Metric], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Map each sample of `name` (a sample name) to its value, keyed by sorted labels."""
    family_name = name.removesuffix("_total")
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for sample in families[family_name].samples:
        if sample.name == name:
            out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def scrape(url: str) -> tuple[str, str]:
    """GET a metrics URL; return (body, content type)."""
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback URL we built)
        return response.read().decode(), response.headers["Content-Type"]


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    """Run `promtool check metrics` on an exposition."""
    return subprocess.run(
        [promtool(), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def names_in(families: Iterable[Metric]) -> set[str]:
    return {family.name for family in families}
