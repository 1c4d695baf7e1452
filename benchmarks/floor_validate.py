"""Floor for the HTTP benchmark: POST /v1/reports that only validates the body.

    .venv/bin/python -m benchmarks.floor_validate --port P

The same pydantic model as the ledger (`gpucap.ledger.models.Report`, strict), the same answer
(`{"status": "accepted", "seq": N}`, 422 for a bad body), under uvicorn with the ledger's options
(one worker, no access log, the loop and HTTP parser `uvicorn[standard]` picks). No token check,
no database: what any ledger must at least spend per report.
"""

from __future__ import annotations

import argparse

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from gpucap.ledger.models import Report


def create_app() -> FastAPI:
    app = FastAPI(title="floor: validate only")

    @app.post("/v1/reports")
    async def post_report(request: Request) -> JSONResponse:
        try:
            report = Report.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"detail": str(exc)}, 422)
        return JSONResponse({"status": "accepted", "seq": report.seq})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    # The options `gpucap ledger serve` passes (ledger/cli.py) for one worker.
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
