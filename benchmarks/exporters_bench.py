"""Scrape cost of both exporters on large snapshots; prints numbers, asserts nothing.

Run: .venv/bin/python -m benchmarks.exporters_bench
"""

from __future__ import annotations

import time
import urllib.request

from prometheus_client import generate_latest

from gpucap.exporters.agent import agent_registry, start_agent_metrics_server
from gpucap.exporters.ledger import metrics_response
from gpucap.exporters.snapshots import (
    AgentSnapshot,
    CapSample,
    DeviceSample,
    LedgerSnapshot,
    SiteSample,
)


def _agent(devices: int) -> AgentSnapshot:
    return AgentSnapshot(
        "node-0001",
        "site-1",
        "0.1.0",
        True,
        tuple(
            DeviceSample(
                f"GPU-{i:08d}",
                "h100-sxm5-80gb",
                "0x2330",
                "NVIDIA H100",
                "550.54.15",
                "ok",
                15832.0,
                "3A090.a",
            )
            for i in range(devices)
        ),
        15832.0 * devices,
        float(devices),
    )


def _ledger(sites: int, caps: int) -> LedgerSnapshot:
    return LedgerSnapshot(
        "us-bis-ai-diffusion-2025",
        "rescinded",
        tuple(CapSample("cap", f"S{i}", 1.0, 2.0, False, 3.0) for i in range(caps)),
        tuple(SiteSample(f"site-{i}", "e", "DE", "1", 1.0) for i in range(sites)),
        {(f"site-{i}", "fresh"): 10 for i in range(sites)},
    )


def _best_ms(fn: object, repeat: int = 50) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    for devices in (8, 64):
        snap = _agent(devices)
        registry = agent_registry(lambda snap=snap: snap)
        size = len(generate_latest(registry))
        ms = _best_ms(lambda registry=registry: generate_latest(registry))
        print(f"agent exposition, {devices} devices: {ms:.3f} ms, {size} bytes")
    snap = _agent(8)
    with start_agent_metrics_server(0, "127.0.0.1", lambda: snap) as server:

        def scrape() -> None:
            with urllib.request.urlopen(server.url) as response:  # noqa: S310 (loopback)
                response.read()

        print(f"agent HTTP scrape over loopback, 8 devices: {_best_ms(scrape):.3f} ms")
    for sites, caps in ((100, 50), (2000, 500)):
        ledger = _ledger(sites, caps)
        size = len(metrics_response(lambda ledger=ledger: ledger)[0])
        ms = _best_ms(lambda ledger=ledger: metrics_response(lambda: ledger), repeat=20)
        print(f"ledger exposition, {sites} sites and {caps} caps: {ms:.3f} ms, {size} bytes")


if __name__ == "__main__":
    main()
