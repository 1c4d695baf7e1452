"""Errors of the ledger.

    GpucapError (gpucap.core.errors)
    ├── InputError                  bad user input (CLI exit 2, HTTP 422)
    │   └── RejectedError          a report failed validation; nothing was written (HTTP 422)
    └── LedgerError                 an operational failure of the ledger (CLI exit 3)
        ├── AuthError               a request was refused (HTTP 401 / 403, see `status_code`)
        ├── ChainBrokenError             `verify` found an altered, deleted or inserted event row
        └── UnavailableError       the ledger's database or HTTP API cannot be reached

The API maps these to HTTP status in `app.py` only; the CLI maps them to exit codes in
`gpucap/cli.py` only.
"""

from __future__ import annotations

from gpucap.core.errors import GpucapError, InputError


class RejectedError(InputError):
    """A report or request body is malformed, oversized or inconsistent (HTTP 422)."""


class LedgerError(GpucapError):
    """An operational failure of the ledger."""


class AuthError(LedgerError):
    """A refused request; `status_code` is 401 (no or invalid token) or 403 (out of scope)."""

    def __init__(self, status_code: int, reason: str, detail: str) -> None:
        self.status_code = status_code
        super().__init__("auth", f"{reason}: {detail}")
        self.reason = reason  # a short label used as the metric label value
        self.detail = detail


class ChainBrokenError(LedgerError):
    """The event log's hash chain does not verify; `seq` names the first bad row."""

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        super().__init__(f"event[{seq}]", reason)


class UnavailableError(LedgerError):
    """The database or the ledger's HTTP API could not be reached or answered an error."""
