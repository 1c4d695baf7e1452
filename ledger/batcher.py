"""Group commit: reports queued by any number of threads, written in batches by one thread.

A commit (an fsync on SQLite FULL, a WAL flush on PostgreSQL) costs more than everything else a
heartbeat does, and a report may only be answered once its transaction is durable. So callers
queue their report and wait; one writer thread takes everything queued (up to `max_batch`),
writes it in one transaction and answers each caller. Under load the batch grows by itself
while the previous commit is in flight. A thread, not asyncio, because the database drivers
block.

Callers that wait for their answer before sending again (an agent, a client thread) all queue
again just after a commit, one by one: taking whatever is queued at once splits them into a
batch of the first and a batch of the rest, alternately. So the writer expects as many items as
the last batch held plus those that arrived while it was written, and when fewer are queued it
lingers for the rest, at most a quarter of the last write's duration (and `max_linger_s`). A
lone caller is expected alone and never waits.
"""

from __future__ import annotations

import threading
import time
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
        self,
        write: Callable[[Sequence[T]], Sequence[R | BaseException]],
        max_batch: int = 64,
        max_linger_s: float = 0.002,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._max_linger_s = max_linger_s
        self._expect = 1  # items the next batch is expected to hold
        self._linger_s = 0.0  # how long to wait for them: a quarter of the last write
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
                if len(self._queue) < self._expect and not self._closed:
                    deadline = time.monotonic() + self._linger_s
                    while len(self._queue) < self._expect and not self._closed:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._ready.wait(left)
                n = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(n)]
            self._answer(batch)

    def _answer(self, batch: list[tuple[T, Future[R]]]) -> None:
        started = time.monotonic()
        try:
            results = self._write([item for item, _f in batch])
        except BaseException as exc:  # the callers get it; the writer thread lives on
            for _item, future in batch:
                future.set_exception(exc)
            return
        finally:
            # Before anyone is answered: what queued meanwhile, not the answered queuing again.
            with self._ready:
                self._expect = min(self._max_batch, len(batch) + len(self._queue))
                self._linger_s = min(self._max_linger_s, (time.monotonic() - started) / 4)
        for (_item, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
