"""The one backend protocol: each collection returns a NodeReading and never raises."""

from __future__ import annotations

from typing import Protocol

from gpucap.agent.model import NodeReading


class NvmlBackend(Protocol):
    """A source of node readings: the real NVML (`nvml_real`) or a scenario (`nvml_fake`)."""

    def read(self) -> NodeReading:
        """Collect once; NVML being down is `nvml_up=False` with a reason, not an error."""
        ...

    def close(self) -> None:
        """Release NVML (shutdown); safe to call twice."""
        ...


def open_backend(
    fake: str | None, *, real_over_fake: bool = False, timeout_seconds: float = 10.0
) -> NvmlBackend:
    """The backend the CLI asked for: the real NVML, or a shipped/named scenario.

    `real_over_fake` runs the real pynvml backend on the fake NVML C library for the scenario
    (what the contract tests and the benchmark use); the plain fake skips pynvml altogether.
    """
    if fake is None:
        from gpucap.agent.nvml_real import PynvmlBackend

        return PynvmlBackend(timeout_seconds=timeout_seconds)
    from gpucap.agent.fake_machine import FakeMachine
    from gpucap.agent.scenario import load_scenario

    machine = FakeMachine(load_scenario(fake))
    if real_over_fake:
        from gpucap.agent.fake_libnvml import FakeLibNvml
        from gpucap.agent.nvml_real import PynvmlBackend

        return PynvmlBackend(timeout_seconds=timeout_seconds, library=FakeLibNvml(machine))
    from gpucap.agent.nvml_fake import FakeBackend

    return FakeBackend(machine, timeout_seconds=timeout_seconds)
