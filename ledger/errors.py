"""Errors of the ledger.

    GpucapError (gpucap.core.errors)
    ├── InputError                  bad user input (CLI exit 2, HTTP 422)
    │   └── RejectedError          a report failed validation; nothing was written (HTTP 422)
    └── LedgerError                 an operational failure of the ledger (CLI exit 3)
        ├── AuthError               a request was refused (HTTP 401 / 403, see `status_code`)
        ├── LogBrokenError          `ledger verify` found a stored entry, tree node, checkpoint
        │                           or projection row that does not follow from the log
        ├── VerificationError       a proof, checkpoint signature or consistency check failed
        │                           (`gpucap log verify` exit 1: the log's answer is wrong)
        └── UnavailableError       the ledger's database or HTTP API cannot be reached

The API maps these to HTTP status in `app.py` only; the CLI maps them to exit codes in
`gpucap/cli.py` only (`log verify` turns VerificationError into its documented exit 1).
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


class LogBrokenError(LedgerError):
    """The stored log does not verify; `where` names the first bad entry, node or row."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        super().__init__(where, reason)


class VerificationError(LedgerError):
    """A Merkle proof, a signed note or a consistency check does not verify."""


class UnavailableError(LedgerError):
    """The database or the ledger's HTTP API could not be reached or answered an error."""
