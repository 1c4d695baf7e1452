"""Floor for the HTTP benchmark: validate the body, then commit one SQLite row per report.

    .venv/bin/python -m benchmarks.floor_persist --port P --db PATH [--max-batch 64]

`floor_validate` plus durability: each request queues one small row (node id, seq) for a single
writer thread and waits for its commit (WAL, synchronous=FULL) before answering. The writer
takes everything queued (at most --max-batch, the ledger's group-commit limit) into one
transaction, the least a ledger that acknowledges only durable reports can do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import threading
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Future

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from gpucap.ledger.models import Report


class RowWriter:
    """One thread committing queued (node id, seq) rows; `submit` answers once durable."""

    def __init__(self, path: str, max_batch: int) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS received "
            "(id INTEGER PRIMARY KEY, node_id TEXT NOT NULL, seq INTEGER NOT NULL)"
        )
        self._max_batch = max_batch
        self._queue: deque[tuple[tuple[str, int], Future[None]]] = deque()
        self._ready = threading.Condition()
        threading.Thread(target=self._run, name="floor-writer", daemon=True).start()

    def submit(self, node_id: str, seq: int) -> Future[None]:
        future: Future[None] = Future()
        with self._ready:
            self._queue.append(((node_id, seq), future))
            self._ready.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                n = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(n)]
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT INTO received (node_id, seq) VALUES (?, ?)", [row for row, _f in batch]
            )
            self._conn.execute("COMMIT")
            for _row, future in batch:
                future.set_result(None)


def create_app(db_path: str, max_batch: int) -> FastAPI:
    writer: list[RowWriter] = []

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        writer.append(RowWriter(db_path, max_batch))
        yield

    app = FastAPI(title="floor: validate and persist", lifespan=lifespan)

    @app.post("/v1/reports")
    async def post_report(request: Request) -> JSONResponse:
        try:
            report = Report.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"detail": str(exc)}, 422)
        await asyncio.wrap_future(writer[0].submit(report.node_id, report.seq))
        return JSONResponse({"status": "accepted", "seq": report.seq})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True, help="SQLite file (created)")
    parser.add_argument("--max-batch", type=int, default=64)
    args = parser.parse_args(argv)
    app = create_app(args.db, args.max_batch)
    # The options `gpucap ledger serve` passes (ledger/cli.py) for one worker.
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
