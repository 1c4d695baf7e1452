"""Wiring the agent to its metrics exporter: the latest snapshot, held in memory.

The daemon publishes an AgentSnapshot after every step; a scrape only reads it, so a scrape
never calls NVML. The exporter itself lives in `gpucap.exporters.agent`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from gpucap.agent.config import AgentConfig
from gpucap.exporters.snapshots import AgentSnapshot


class Closeable(Protocol):
    def close(self) -> None: ...


class MetricsBox:
    """The latest snapshot; replaced whole, so a reader never sees a half-updated one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: AgentSnapshot | None = None

    def set(self, snapshot: AgentSnapshot) -> None:
        with self._lock:
            self._snapshot = snapshot

    def set_initial(self, config: AgentConfig) -> None:
        from gpucap.agent.daemon import AGENT_VERSION

        self.set(AgentSnapshot(config.node_id, config.site, AGENT_VERSION, nvml_up=False))

    def get(self) -> AgentSnapshot:
        with self._lock:
            assert self._snapshot is not None
            return self._snapshot


def start_metrics(port: int, host: str, snapshot: Callable[[], AgentSnapshot]) -> Closeable:
    """Serve the agent's metrics on host:port (MetricsServerError if it cannot bind)."""
    from gpucap.exporters.agent import start_agent_metrics_server

    return start_agent_metrics_server(port, host, snapshot)
