"""Group commit: reports queued by any number of threads, written in batches by one thread.

A commit (an fsync on SQLite FULL, a WAL flush on PostgreSQL) costs more than everything else a
heartbeat does, and a report may only be answered once its transaction is durable. So callers
queue their report and wait; one writer thread takes everything queued (up to `max_batch`),
writes it in one transaction and answers each caller. Under load the batch grows by itself
while the previous commit is in flight; alone, a report is written at once, never delayed by a
timer. A thread, not asyncio, because the database drivers block.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommitter(Generic[T, R]):
    """Runs `write(batch) -> results` on one thread; `submit(item)` gives a Future of its result.

    A result that is an exception is set as the Future's exception. If `write` itself raises,
    every item of that batch gets the exception. `close()` answers what is queued and stops the
    thread; a later `submit` starts a new one.
    """

    def __init__(
        self, write: Callable[[Sequence[T]], Sequence[R | BaseException]], max_batch: int = 64
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._queue: deque[tuple[T, Future[R]]] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, item: T) -> Future[R]:
        future: Future[R] = Future()
        with self._ready:
            if self._thread is None:
                self._closed = False
                self._thread = threading.Thread(
                    target=self._run, name="gpucap-ledger-writer", daemon=True
                )
                self._thread.start()
            self._queue.append((item, future))
            self._ready.notify()
        return future

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    # Under the lock: a submit from now on starts a new thread.
                    self._thread = None
                    return
                n = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(n)]
            self._answer(batch)

    def _answer(self, batch: list[tuple[T, Future[R]]]) -> None:
        try:
            results = self._write([item for item, _f in batch])
        except BaseException as exc:  # the callers get it; the writer thread lives on
            for _item, future in batch:
                future.set_exception(exc)
            return
        for (_item, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
