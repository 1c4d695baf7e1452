"""Shared test helpers."""

from __future__ import annotations

import os


def in_ci() -> bool:
    """Under CI=true a test that needs a service fails instead of skipping."""
    return os.environ.get("CI", "").lower() == "true"
