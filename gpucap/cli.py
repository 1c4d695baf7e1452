"""The `gpucap` command line: one argparse tree, assembled from each part's `register()`.

Exit codes are decided here and nowhere else:
  0  success (for `evaluate`/`headroom`: nothing breached)
  1  the answer is "breached" / "not allowed" (a command returns it; not an error)
  2  invalid input: one line on stderr naming the field path and the reason
  3  an operational failure (a service unreachable, a refusal) described on stderr
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from gpucap import __version__
from gpucap.core.errors import DataError, GpucapError, InputError

# Each module exposes `register(subparsers)`, adding commands whose handlers are stored as
# `func` and return an exit code. Handlers import heavy dependencies themselves, so that
# `gpucap evaluate` does not pay for the ledger's web stack.
_COMMAND_MODULES = (
    "gpucap.core.cli",
    "gpucap.agent.cli",
    "gpucap.ledger.cli",
    "gpucap.ledger.audit_cli",
    "gpucap.ledger.periodreport",
    "gpucap.demo",
    "gpucap.completion",
)

EXIT_INPUT = 2
EXIT_OPERATIONAL = 3
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a killed writer

# Top-level modules from the `ledger` extra that gpucap imports. `pip install gpucap` (a node agent)
# leaves them out, so a command that needs one says what to install instead of a traceback.
LEDGER_EXTRA_MODULES = frozenset(
    {
        "alembic",
        "fastapi",
        "psycopg",
        "sqlalchemy",
        "sqlmodel",
        "starlette",
        "swagger_ui_bundle",
        "uvicorn",
    }
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpucap", description="Compute-cap accounting for GPU clusters."
    )
    parser.add_argument("-V", "--version", action="version", version=f"gpucap {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (InputError, DataError) as exc:
        print(f"gpucap: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except GpucapError as exc:
        print(f"gpucap: error: {exc}", file=sys.stderr)
        return EXIT_OPERATIONAL
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in LEDGER_EXTRA_MODULES:
            raise
        print(
            f"gpucap: error: {exc.name}: not installed; this command needs the ledger's"
            " dependencies: pip install 'gpucap[ledger]'",
            file=sys.stderr,
        )
        return EXIT_OPERATIONAL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`gpucap evaluate ... | head`): stop quietly, as a shell tool does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code
