"""Shared helpers for the agent tests: both backends for a scenario, the report schema."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpucap.agent.fake_libnvml import FakeLibNvml
from gpucap.agent.fake_machine import FakeMachine
from gpucap.agent.nvml_fake import FakeBackend
from gpucap.agent.nvml_real import PynvmlBackend, install_library
from gpucap.agent.scenario import load_scenario

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def make_backend(kind: str, scenario: str, timeout_seconds: float = 5.0) -> Any:
    machine = FakeMachine(load_scenario(scenario))
    if kind == "fake":
        return FakeBackend(machine, timeout_seconds=timeout_seconds)
    return PynvmlBackend(timeout_seconds=timeout_seconds, library=FakeLibNvml(machine))


@pytest.fixture
def report_schema() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((REPO / "schemas" / "report-v1.schema.json").read_text())
    return doc


@pytest.fixture(autouse=True)
def _unload_fake_library() -> Iterator[None]:
    yield
    install_library(None)  # leave pynvml as it was: no library loaded


def break_directory(directory: Path) -> Callable[[], None]:
    """Put a regular file where `directory` was, a failure root's privileges cannot bypass
    (ENOTDIR/EEXIST); the function returned puts the directory back, contents intact."""
    aside = directory.with_name(directory.name + ".aside")
    directory.rename(aside)
    directory.write_text("not a directory\n")

    def restore() -> None:
        directory.unlink()
        aside.rename(directory)

    return restore


def disk_full_at(path: Path) -> None:
    """Make the next write of `path` through its temp file fail with ENOSPC: the temp file's
    name is a link to /dev/full, which refuses every write with ENOSPC, even root's."""
    path.with_name(f".{path.name}.tmp").symlink_to("/dev/full")
