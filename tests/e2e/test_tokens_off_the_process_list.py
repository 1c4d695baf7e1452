"""The documented setups keep tokens out of what `ps` shows: the demo stack (a ledger and its
agents, as an operator would start them) is running, and no process's command line, nor any of
the stack's environments, holds the operator, node or metrics token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpucap.core.data import shipped
from gpucap.demo import DemoStack
from tests.conftest import unavailable

pytestmark = pytest.mark.slow


def _processes() -> Iterator[tuple[int, Path]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name), entry


def _read(path: Path) -> bytes:
    """A /proc file of a process, or nothing when it has exited or is not ours to read."""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_no_token_is_on_a_command_line_or_in_an_environment(tmp_path: Path) -> None:
    if not Path("/proc/self/cmdline").exists():
        unavailable("no /proc: not Linux")
    stack = DemoStack(state_dir=tmp_path / "demo", fleet_dir=shipped("demo"), interval_s=1.0)
    try:
        stack.start()
        stack.wait_for_reports()  # the tokens from files work: every agent's reports arrived
        files = {p.name: p.read_text().strip() for p in (stack.state_dir / "secrets").iterdir()}
        assert files.pop("metrics.token") == stack.metrics_token
        node_tokens = [files.pop(f"{spec.node}.token") for spec in stack.agents]
        assert files == {}
        secrets = [stack.operator_token, stack.metrics_token, *node_tokens]
        assert all(len(s) >= 16 for s in secrets)
        children = {c.process.pid for c in stack.children.values()}
        assert all(c.process.poll() is None for c in stack.children.values())
        seen = 0
        for pid, proc in _processes():
            cmdline = _read(proc / "cmdline")
            seen += pid in children and b"gpucap" in cmdline
            for secret in secrets:
                assert secret.encode() not in cmdline, f"a token on the command line of {pid}"
            if pid in children:
                environ = _read(proc / "environ")
                assert b"GPUCAP_" in environ, "the environment could not be read"
                for secret in secrets:
                    assert secret.encode() not in environ, f"a token in the environment of {pid}"
        assert seen == len(children), "not every child of the stack was inspected"
    finally:
        stack.close()
