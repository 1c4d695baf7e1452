"""Errors of the compliance core.

    GpucapError
    ├── InputError      a user's file or argument is invalid (CLI exit 2, HTTP 422)
    └── DataError       a shipped or named data file (catalogue, rule pack) is invalid

Each carries `path`, the dotted field path of what is wrong (``inventory[2].count``), and
`reason`; `str()` gives the one line a user sees.
"""

from __future__ import annotations


class GpucapError(Exception):
    """Base of every error gpucap raises on purpose."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


class InputError(GpucapError):
    """A user's input (scenario file, CLI argument, API body) is invalid."""


class DataError(GpucapError):
    """A data file (catalogue, rule pack, country list) is invalid."""
