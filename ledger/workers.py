"""`gpucap ledger serve --workers N`: N uvicorn processes forked from one supervisor.

The supervisor migrates and records the registry first (one error line, exit 2/3, as with one
process), binds the listening socket, and forks the workers, which accept on the shared socket
and each open their own connections (nothing the database owns crosses the fork). Several
processes on one database are safe by design: writers serialise on the database (see store.py)
and every cache is validated against `ledger_state`. SIGHUP re-reads the registry in the
supervisor; the workers see the new registry on their next request because it is in the
database. SIGTERM/SIGINT stop the workers gracefully; a worker that dies stops the others and
the supervisor exits 1, so that the service manager restarts the whole set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gpucap.ledger.service import Ledger, serving_policy
from gpucap.ledger.settings import Settings

_logger = logging.getLogger("gpucap.ledger")


def serve(
    settings: Settings,
    ledger: Ledger,
    reload: Callable[[Ledger, Path], None],
    uvicorn_options: dict[str, Any],
) -> int:
    """Run `settings.workers` worker processes until SIGTERM/SIGINT; the exit status."""
    import uvicorn

    # Configs only to bind with: log_config None keeps uvicorn's own logging setup off, so
    # that the supervisor's lines stay in the format `serve` configured.
    sock = uvicorn.Config(
        "unused:app", host=settings.host, port=settings.port, log_config=None
    ).bind_socket()
    msock = None
    if settings.metrics_port is not None:
        host = settings.metrics_host or settings.host
        msock = uvicorn.Config(
            "unused:app", host=host, port=settings.metrics_port, log_config=None
        ).bind_socket()
    ledger.store.close()  # the workers open their own connections and writer-lock file
    alive: set[int] = set()
    for _ in range(settings.workers):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 1
            try:
                code = _worker(settings, sock, msock, uvicorn_options)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        alive.add(pid)
    stopping = threading.Event()

    def stop(_signum: int = 0, _frame: Any = None) -> None:
        stopping.set()
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):  # it has just exited
                os.kill(pid, signal.SIGTERM)

    def hup(_signum: int, _frame: Any) -> None:
        if settings.registry is not None:
            threading.Thread(target=reload, args=(ledger, settings.registry), daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, hup)
    code = 0
    try:
        while alive:
            try:
                pid, _status = os.wait()
            except ChildProcessError:
                break
            alive.discard(pid)
            if not stopping.is_set():
                _logger.error("ledger worker %d exited; stopping the others", pid)
                code = 1
                stop()
    finally:
        sock.close()
        if msock is not None:
            msock.close()
        ledger.store.close()
    return code


def _worker(
    settings: Settings,
    sock: socket.socket,
    msock: socket.socket | None,
    uvicorn_options: dict[str, Any],
) -> int:
    import uvicorn

    from gpucap.ledger import listeners
    from gpucap.ledger.app import create_app
    from gpucap.ledger.store import Store

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor re-reads the registry
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # uvicorn installs its own while it serves
    store = Store.open(settings, migrate=False)
    try:
        ledger = Ledger(settings, store)
        app = create_app(replace(settings, registry=None), ledger)
        serving_policy(ledger)
        metrics = None
        if msock is not None:
            metrics = uvicorn.Config(
                listeners.metrics_app(settings, lambda: ledger), **uvicorn_options
            )
        api = uvicorn.Config(app, **uvicorn_options)
        listeners.run(api, metrics, [sock], None if msock is None else [msock])
    finally:
        store.close()
    return 0
