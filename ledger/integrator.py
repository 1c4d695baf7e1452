"""The integrator thread of a serving ledger process: keeps every acknowledged entry in a signed
checkpoint within `interval_s` (well inside the promised 2 s).

It integrates as soon as this process appended something (`wake`), and every `interval_s`
anyway, for entries that other processes or the CLI appended. Several processes may run one:
`log.integrate` serialises them on the database. A failed round is logged once per distinct
error and retried on the next; the entries stay pending, so nothing is lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from gpucap.core.errors import GpucapError
from gpucap.ledger import log
from gpucap.ledger.store import Store

_log = logging.getLogger("gpucap.ledger")


class Integrator:
    def __init__(
        self,
        store: Store,
        signer: Callable[[], log.Signer],
        clock: Callable[[], datetime],
        interval_s: float,
        keep_s: float,
    ) -> None:
        self._store = store
        self._signer = signer
        self._clock = clock
        self._interval_s = interval_s
        self._keep_s = keep_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one round at a time in this process
        self.last_error: str | None = None

    def run_once(self) -> int:
        """Integrate what is pending now; the number of entries integrated."""
        with self._lock:
            return log.integrate(self._store, self._signer(), self._clock(), self._keep_s)

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="gpucap-log-integrator", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval_s)
            self._wake.clear()
            self._step()
        self._step()  # what was acknowledged before the stop is signed before the exit

    def _step(self) -> None:
        try:
            self.run_once()
        except GpucapError as exc:
            self._failed(str(exc), None)
        except Exception as exc:  # a bug must not stop the thread; logged with its traceback
            self._failed(f"{type(exc).__name__}: {exc}", exc)
        else:
            if self.last_error is not None:
                _log.info("log integrated again")
                self.last_error = None

    def _failed(self, text: str, exc: BaseException | None) -> None:
        if text != self.last_error:
            self.last_error = text
            _log.error("log not integrated (entries stay pending): %s", text, exc_info=exc)
