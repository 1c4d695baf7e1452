"""The systemd ledger unit and the environment-file example, checked against the code."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from gpucap.agent.config import load_config
from gpucap.ledger.settings import Settings
from tests.deploy.deploy_testkit import DEPLOY, ROOT

SYSTEMD = DEPLOY / "systemd"
ENV_EXAMPLE = SYSTEMD / "gpucap.env.example"
_VAR = re.compile(r"GPUCAP_[A-Z0-9_]*[A-Z0-9]")
_EXAMPLE_LINE = re.compile(r"^#?(GPUCAP_[A-Z0-9_]+)=(.*)$")
_AGENT_REQUIRED = {
    "GPUCAP_LEDGER": "http://ledger.test:8470",
    "GPUCAP_TOKEN": "t",
    "GPUCAP_NODE_ID": "n",
    "GPUCAP_SITE": "s",
}


def _code_variables() -> set[str]:
    """Every GPUCAP_* name in the package's Python source (the symlinked parts once each)."""
    found: set[str] = set()
    for top in ("gpucap", "agent", "ledger", "exporters"):
        for folder, _, files in os.walk(ROOT / top):  # does not follow gpucap/<part> symlinks
            for name in files:
                if name.endswith(".py"):
                    found |= set(_VAR.findall((Path(folder) / name).read_text()))
    return found


def _example() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = _EXAMPLE_LINE.match(line)
        if match:
            assert match[1] not in entries, f"{match[1]} listed twice"
            entries[match[1]] = match[2]
    return entries


def _defaults() -> dict[str, str]:
    return {name: value for name, value in _example().items() if value}


def test_the_example_lists_exactly_the_variables_the_code_reads() -> None:
    code, example = _code_variables(), set(_example())
    assert code, "no GPUCAP_* names found in the source; the scan is broken"
    assert sorted(code - example) == [], "read by the code but missing from the example"
    assert sorted(example - code) == [], "in the example but read by no code"


def test_every_variable_is_explained_by_a_comment_above_it() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if _EXAMPLE_LINE.match(line):
            above = lines[index - 1]
            assert above.startswith("# ") or _EXAMPLE_LINE.match(above), line


def test_ledger_defaults_in_the_example_are_the_code_defaults() -> None:
    assert Settings.from_env(_defaults()) == Settings.from_env({})


def test_agent_defaults_in_the_example_are_the_code_defaults() -> None:
    with_defaults = load_config({}, environ={**_defaults(), **_AGENT_REQUIRED})
    assert with_defaults == load_config({}, environ=dict(_AGENT_REQUIRED))


@pytest.mark.parametrize(
    ("variable", "value"),
    [("GPUCAP_LEDGER_PORT", "8471"), ("GPUCAP_STALE_INTERVALS", "4")],
)
def test_the_default_comparison_notices_a_wrong_default(variable: str, value: str) -> None:
    assert Settings.from_env({**_defaults(), variable: value}) != Settings.from_env({})


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not KEY=VALUE"
        current.setdefault(key, []).append(value)
    return sections


def test_ledger_unit_runs_the_ledger_unprivileged_and_hardened() -> None:
    unit = _unit(SYSTEMD / "gpucap-ledger.service")
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["ExecStart"][0].endswith("gpucap ledger serve")
    assert service["ExecStartPre"][0].endswith("gpucap ledger migrate")
    assert service["EnvironmentFile"] == ["-/etc/gpucap/ledger.env"]
    assert service["DynamicUser"] == ["yes"]
    assert service["StateDirectory"] == ["gpucap-ledger"]
    assert service["CapabilityBoundingSet"] == [""]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
    }.items():
        assert service.get(key) == [value], key
    assert "@system-service" in service["SystemCallFilter"]
    assert "AF_INET" in service["RestrictAddressFamilies"][0].split()
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


_SECRETS = ("GPUCAP_TOKEN", "GPUCAP_METRICS_TOKEN", "GPUCAP_LEDGER_SECRET")
_EXEC = ("ExecStart", "ExecStartPre", "ExecReload")


def _environment(service: dict[str, list[str]]) -> dict[str, str]:
    """The unit's Environment= assignments (several may share one line)."""
    items = [item for line in service.get("Environment", []) for item in line.split()]
    return {key: value for key, _, value in (item.partition("=") for item in items)}


def _credentials(service: dict[str, list[str]]) -> dict[str, str]:
    """LoadCredential=NAME:PATH as {NAME: PATH}."""
    return dict(line.partition(":")[::2] for line in service.get("LoadCredential", []))


def _leaks(service: dict[str, list[str]]) -> list[str]:
    """Where a unit would show a secret: a command line (`ps`), an Environment= value, or a
    *_FILE variable naming a credential the unit does not load."""
    found = [
        f"{key}={command}"
        for key in _EXEC
        for command in service.get(key, [])
        if re.search(r"--token\b|TOKEN|SECRET|Bearer", command, re.IGNORECASE)
    ]
    environment = _environment(service)
    found += [f"Environment={name}" for name in _SECRETS if name in environment]
    found += [
        f"Environment={name}={value}"
        for name, value in environment.items()
        if value.startswith("%d/") and value.removeprefix("%d/") not in _credentials(service)
    ]
    return found


@pytest.mark.parametrize(
    ("unit", "variable", "source"),
    [
        ("gpucap-agent.service", "GPUCAP_TOKEN_FILE", "/etc/gpucap/agent.token"),
        ("gpucap-ledger.service", "GPUCAP_METRICS_TOKEN_FILE", "/etc/gpucap/ledger-metrics-token"),
    ],
)
def test_units_hand_secrets_over_as_credentials(unit: str, variable: str, source: str) -> None:
    service = _unit(SYSTEMD / unit)["Service"]
    value = _environment(service)[variable]
    assert value.startswith("%d/"), f"{variable} must name a file in the credentials directory"
    assert _credentials(service)[value.removeprefix("%d/")] == source


@pytest.mark.parametrize("unit", sorted(p.name for p in SYSTEMD.glob("*.service")))
def test_no_unit_puts_a_token_on_a_command_line_or_in_its_environment(unit: str) -> None:
    service = _unit(SYSTEMD / unit)["Service"]
    assert service["ExecStart"], "no command found; the parse is broken"
    assert _leaks(service) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("GPUCAP_TOKEN_FILE=%d/gpucap-token", "GPUCAP_TOKEN=gpc1.x.y"),
        ("GPUCAP_TOKEN_FILE=%d/gpucap-token", "GPUCAP_TOKEN_FILE=%d/elsewhere"),
        ("ExecStart=/usr/bin/gpucap agent run", "ExecStart=/usr/bin/gpucap agent run --token t"),
    ],
)
def test_the_leak_check_notices_a_token_where_ps_shows_it(
    tmp_path: Path, old: str, new: str
) -> None:
    text = (SYSTEMD / "gpucap-agent.service").read_text()
    assert old in text
    unit = tmp_path / "bad.service"
    unit.write_text(text.replace(old, new))
    assert len(_leaks(_unit(unit)["Service"])) == 1


def test_the_example_says_where_the_units_take_the_tokens_from() -> None:
    text = ENV_EXAMPLE.read_text()
    assert "%d/gpucap-token" in text
    assert "%d/gpucap-metrics-token" in text
