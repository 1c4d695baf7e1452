"""Helpers for the deployment-artefact tests: paths, promtool, and PromQL metric-name extraction.

A plain module (not a conftest) with a name unique across tests/, imported by the tests beside it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from gpucap.exporters.agent import AGENT_METRICS
from gpucap.exporters.ledger import LEDGER_METRICS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# Series names a PromQL expression may select: what the exporters declare, plus the series
# Prometheus itself adds for every target.
KNOWN_SERIES = frozenset(
    {spec.name for spec in (*AGENT_METRICS, *LEDGER_METRICS)} | {"up", "scrape_duration_seconds"}
)

_KEYWORDS = frozenset(
    {
        "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
        "bool", "offset", "inf", "nan", "e",
    }
)  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_GRAFANA_VARS = re.compile(r"\$\{[^}]*\}|\$__\w+|\$\w+")
_IDENT = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )


def check_balanced(expr: str) -> None:
    """Fail unless (), [] and {} nest properly outside string literals."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in _STRING.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs:
            assert stack, f"unbalanced {char!r} in {expr!r}"
            assert stack.pop() == pairs[char], f"unbalanced {char!r} in {expr!r}"
    assert not stack, f"unclosed {stack[-1]!r} in {expr!r}"


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, keywords, labels removed)."""
    text = _GRAFANA_VARS.sub("1m", expr)
    text = _STRING.sub('""', text)
    text = _MATCHERS.sub("", text)
    previous = None
    while previous != text:  # ranges may nest inside subqueries
        previous, text = text, _RANGE.sub("", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names
