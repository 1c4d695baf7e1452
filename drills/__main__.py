"""`python -m drills [NAME ...]`: run every drill (or the ones named), one result block each.

Each drill runs under its own time bound (SIGALRM; over it, the drill FAILs and its children
are stopped on the way out), on loopback only, in a temporary directory. The exit status is 1
if any drill FAILs. `RELIABILITY.md` records what each one measured.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType

from drills import common
from drills.agent_kill import kill_agent
from drills.common import Result
from drills.crash import kill_ledger, pg_restart
from drills.security import security
from drills.slow_clients import slow_clients
from drills.spool_full import spool_full

_FUZZ_TALLY = re.compile(r"requests (\d+), server errors (\d+), schema violations (\d+)")
FUZZ_ARGS = ["--max-examples", "10", "--seconds", "60"]


def fuzz() -> Result:
    """`drills.fuzz` (schemathesis over the served OpenAPI document), bounded to one minute of
    rounds; it prints its own summary above this block."""
    from drills import fuzz as fuzzing

    result = Result("fuzz", did=f"python -m drills.fuzz {' '.join(FUZZ_ARGS)}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = fuzzing.main(FUZZ_ARGS)
    print(out.getvalue(), end="")
    result.check(code == 0, f"python -m drills.fuzz exited {code} (server errors or violations)")
    tally = _FUZZ_TALLY.search(out.getvalue())
    if tally is not None:
        result.sent = f"{tally[1]} requests"
        result.acknowledged = f"{tally[2]} server errors, {tally[3]} schema violations"
    result.verify = "not run: the fuzzed ledger's database is gone with its directory"
    return result


# name -> (drill, time bound in seconds)
DRILLS: dict[str, tuple[Callable[[], Result], int]] = {
    "security": (security, 180),
    "fuzz": (fuzz, 240),
    "kill-ledger": (kill_ledger, 180),
    "pg-restart": (pg_restart, 180),
    "kill-agent": (kill_agent, 120),
    "spool-full": (spool_full, 120),
    "slow-clients": (slow_clients, 120),
}


class OverTimeError(Exception):
    """A drill ran past its time bound."""


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise OverTimeError


def run(name: str) -> Result:
    drill, bound_s = DRILLS[name]
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(bound_s)
    try:
        result = drill()
    except OverTimeError:
        result = Result(name, failures=[f"over its time bound of {bound_s} s"])
    except Exception as exc:  # a drill that cannot finish FAILs with the reason; the rest run
        result = Result(name, failures=[f"{type(exc).__name__}: {exc}"])
        traceback.print_exc(file=sys.stderr)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    result.elapsed_s = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drills", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(DRILLS))
    parser.add_argument("--keep", action="store_true", help="keep each drill's files and logs")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in DRILLS]
    if unknown:
        parser.error(f"unknown drill {', '.join(unknown)} (drills: {', '.join(DRILLS)})")
    names = args.names or [
        n for n in DRILLS if n != "fuzz" or importlib.util.find_spec("drills.fuzz") is not None
    ]
    common.KEEP["workdirs"] = args.keep
    started = time.monotonic()
    results = []
    for name in names:
        result = run(name)
        results.append(result)
        print(result.render(), flush=True)
    failed = [r.name for r in results if not r.passed]
    total = time.monotonic() - started
    verdict = f"FAIL ({', '.join(failed)})" if failed else "PASS"
    print(f"== {len(results)} drills in {total:.0f} s: {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
