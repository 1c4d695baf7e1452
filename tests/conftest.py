"""Shared test helpers."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Under CI=true a test that needs a service fails instead of skipping."""
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """The one way a test gives up for a missing service or tool: a skip on a developer's
    machine, a failure under CI=true (where .ci/run installs everything the tests need)."""
    if in_ci():
        pytest.fail(f"{reason}: required under CI=true")
    pytest.skip(reason)
