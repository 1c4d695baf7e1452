"""Cost of one agent collection + report build, for 8 and 64 fake GPUs, and the agent's RSS.

Run: .venv/bin/python -m benchmarks.agent_bench
Prints CPU milliseconds per collection (NVML walk, catalogue match, inventory, report JSON and
fingerprint) for the fake backend and for the real pynvml backend over the fake C library.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime

from gpucap.agent.fake_libnvml import FakeLibNvml
from gpucap.agent.fake_machine import FakeMachine
from gpucap.agent.inventory import build_inventory
from gpucap.agent.nvml_fake import FakeBackend
from gpucap.agent.nvml_real import PynvmlBackend, install_library
from gpucap.agent.report import build_report, fingerprint
from gpucap.agent.scenario import Scenario, load_scenario
from gpucap.core.catalogue import default_catalogue


def _scale(base: Scenario, count: int) -> Scenario:
    devices = []
    for i in range(count):
        d = base.devices[i % len(base.devices)]
        devices.append(
            replace(
                d,
                uuid=f"GPU-{i:08x}-0000-0000-0000-000000000000",
                pci_bus_id=f"0000{i:04x}:18:00.0",
            )
        )
    return replace(base, devices=tuple(devices), events=())


def _rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(kind: str, gpus: int, rounds: int) -> float:
    machine = FakeMachine(_scale(load_scenario("dgx-h100"), gpus))
    backend = (
        FakeBackend(machine) if kind == "fake" else PynvmlBackend(library=FakeLibNvml(machine))
    )
    catalogue = default_catalogue()
    now = datetime.now(UTC)
    backend.read()  # init outside the measurement
    started = time.process_time()
    for seq in range(1, rounds + 1):
        inventory = build_inventory(backend.read(), catalogue)
        report = build_report(
            inventory,
            node_id="bench",
            site_id="bench",
            seq=seq,
            collected_at=now,
            agent_version="0",
        )
        fingerprint(report)
        json.dumps(report)
    elapsed = time.process_time() - started
    backend.close()
    install_library(None)
    return elapsed / rounds * 1000


def agent_process_rss_mib(seconds: float = 3.0) -> float:
    """VmRSS of a running `gpucap agent run --fake dgx-h100` (ledger unreachable: it spools)."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as spool:
        proc = subprocess.Popen(  # noqa: S603 (our own CLI)
            [
                sys.executable,
                "-m",
                "gpucap",
                "agent",
                "run",
                "--ledger",
                "http://127.0.0.1:9",
                "--token",
                "x",
                "--node-id",
                "bench",
                "--site",
                "bench",
                "--spool",
                spool,
                "--fake",
                "dgx-h100",
                "--interval",
                "0.1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(seconds)
        rss = float("nan")
        with open(f"/proc/{proc.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    return rss


def main() -> None:
    print("gpucap agent benchmark: CPU time per collection + report build")
    for gpus, rounds in ((8, 400), (64, 100)):
        for kind in ("fake", "real"):
            label = "fake backend" if kind == "fake" else "pynvml over fake libnvml"
            print(f"  {gpus:3d} GPUs  {label:26s} {measure(kind, gpus, rounds):7.3f} ms CPU")
    print(f"  benchmark process VmRSS after the runs:      {_rss_mib():.1f} MiB")
    print(f"  `gpucap agent run --fake dgx-h100` VmRSS:     {agent_process_rss_mib():.1f} MiB")


if __name__ == "__main__":
    main()
