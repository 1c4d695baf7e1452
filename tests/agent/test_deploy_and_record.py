"""The systemd unit's keys, and `gpucap agent record` replaying through both backends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpucap.agent.inventory import build_inventory
from gpucap.core.catalogue import default_catalogue

from .conftest import REPO, make_backend

UNIT = REPO / "deploy" / "systemd" / "gpucap-agent.service"


def _unit() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = {}
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        sections[current].setdefault(key, []).append(value)
    return sections


def test_systemd_unit_has_the_promised_keys() -> None:
    unit = _unit()
    service = unit["Service"]
    assert set(unit) == {"Unit", "Service", "Install"}
    assert service["Restart"] == ["on-failure"]
    assert service["StateDirectory"] == ["gpucap-agent"]
    assert service["EnvironmentFile"] == ["/etc/gpucap/agent.env"]
    assert service["RestartPreventExitStatus"] == ["2"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["DynamicUser"] == ["yes"]
    assert service["SupplementaryGroups"] == ["video"]
    assert any("nvidia" in d for d in service["DeviceAllow"])
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables"):
        assert service[key] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert "RestrictAddressFamilies" in service


def test_the_config_file_the_agent_rereads_is_one_systemd_requires() -> None:
    service = _unit()["Service"]
    config = [e.split("=", 1)[1] for e in service["Environment"] if e.startswith("GPUCAP_CONFIG=")]
    for path in config:
        # An optional EnvironmentFile (leading "-") that is also GPUCAP_CONFIG: a missing file
        # starts the agent, which then exits 2 on it, and Restart= loops.
        assert path in service["EnvironmentFile"], f"GPUCAP_CONFIG={path} is not a required file"


def test_a_missing_config_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "agent.env"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUCAP_")}
    env["GPUCAP_CONFIG"] = str(missing)
    result = subprocess.run(
        [sys.executable, "-m", "gpucap", "agent", "run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2  # which the unit's RestartPreventExitStatus does not restart
    assert result.stderr.splitlines() == [
        f"gpucap: error: {missing}: cannot read config file: No such file or directory"
    ]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, check=False
    )
    problems = [
        line
        for line in result.stderr.splitlines()
        if "gpucap-agent.service" in line and "/usr/bin/gpucap" not in line
    ]
    assert not problems, result.stderr


@pytest.mark.parametrize("scenario", ["mig-a100", "mixed-node", "dgx-h100"])
def test_record_then_replay_gives_the_same_inventory(tmp_path: Path, scenario: str) -> None:
    out = tmp_path / f"{scenario}-recorded.yaml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gpucap",
            "agent",
            "record",
            "--fake",
            scenario,
            "--output",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    text = out.read_text()
    original = build_inventory(make_backend("fake", scenario).read(), default_catalogue())
    for device in original.devices:
        assert device.uuid not in text  # anonymised
        assert device.reading.serial is None or device.reading.serial not in text
    for kind in ("fake", "real"):
        replayed = build_inventory(make_backend(kind, str(out)).read(), default_catalogue())
        strip = [
            (
                d.model,
                d.tpp,
                d.state,
                d.reading.name,
                d.reading.pci_subsystem_id,
                d.reading.mig_enabled,
                [m.index for m in d.reading.mig],
                d.reading.serial is None,
            )
            for d in replayed.devices
        ]
        assert strip == [
            (
                d.model,
                d.tpp,
                d.state,
                d.reading.name,
                d.reading.pci_subsystem_id,
                d.reading.mig_enabled,
                [m.index for m in d.reading.mig],
                d.reading.serial is None,
            )
            for d in original.devices
        ]
        assert replayed.totals == original.totals
        assert all(d.uuid.startswith("GPU-") and len(d.uuid) == 40 for d in replayed.devices)


def test_bad_scenario_file_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "schema: gpucap.fake-nvml/v1\ndriver_version: '1'\ndevices:\n- uuid: GPU-1\n  name: X\n"
        "  pci: {bus_id: b, vendor_id: '0x10de', device_id: zz, subsystem_id: '0x0'}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "gpucap", "agent", "inventory", "--fake", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "gpucap: error: bad.devices[0].pci.device_id: "
        "expected a hexadecimal id like '0x2330', got 'zz'"
    )


@pytest.mark.parametrize("columns", [None, "80"])
def test_piped_inventory_table_is_not_truncated(columns: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns

    def inventory(*extra: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "gpucap", "agent", "inventory", "--fake", "mixed-node", *extra],
            capture_output=True,  # stdout is a pipe, not a terminal
            text=True,
            env=env,
            check=True,
        ).stdout

    table = inventory()
    devices = json.loads(inventory("--format", "json"))["devices"]
    assert "…" not in table
    for device in devices:
        row = next(line for line in table.splitlines() if device["uuid"] in line)
        assert device["name"] in row
        assert (device["model"] or "unknown") in row
