"""The ledger's listeners: the API, and optionally `/metrics` on its own address.

The metrics name every entity, site, country and per-site TPP, fleet-wide: whoever can scrape
them sees past entity scoping. `GPUCAP_METRICS_TOKEN` makes a scrape carry
`Authorization: Bearer TOKEN` (what Prometheus' `authorization` scrape option sends), and
`--metrics-host/--metrics-port` serve `/metrics` from a second listener (an internal interface)
and nowhere else. Both servers run in one event loop; the API's server owns the signals and the
metrics server stops with it. With `--tls-cert/--tls-key` both listeners serve HTTPS; without,
a listener that other machines can reach is logged as a warning at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import uvicorn

from gpucap.ledger.errors import AuthError
from gpucap.ledger.settings import Settings

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from gpucap.ledger.service import Ledger


def beyond_loopback(host: str) -> bool:
    """Whether a listener bound to `host` can be reached from other machines: any address but
    a loopback one (`0.0.0.0`, `::`, a LAN address, a host name other than localhost)."""
    if host.lower() == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return True


def warn_plain_http(settings: Settings) -> None:
    """Log each plain-HTTP listener other machines can reach: bearer tokens and reports would
    cross the network readable by anyone on the path."""
    if settings.tls_cert is not None:
        return
    hosts = [("API", settings.host)]
    if settings.metrics_port is not None:
        hosts.append(("metrics", settings.metrics_host or settings.host))
    for listener, host in hosts:
        if beyond_loopback(host):
            logging.getLogger("gpucap.ledger").warning(
                "the %s listener serves plain HTTP on %s, beyond this machine: tokens cross the "
                "network readable; give --tls-cert/--tls-key or put a TLS proxy in front "
                "(docs/deploy.md)",
                listener,
                host,
            )


def check_metrics_token(settings: Settings, header: str | None) -> None:
    """AuthError(401) when a metrics token is set and the request does not carry it."""
    token = settings.metrics_token
    if token is None:
        return
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
        raise AuthError(401, "metrics_token", "a scrape of /metrics needs the metrics token")


def metrics_app(settings: Settings, ledger: Callable[[], Ledger]) -> Starlette:
    """The second listener's application: `/metrics` only."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from gpucap.ledger.app import log_refusal, metrics_response

    async def metrics(request: Request) -> Response:
        led = ledger()
        try:
            check_metrics_token(settings, request.headers.get("authorization"))
        except AuthError as exc:
            led.refuse(exc)
            log_refusal(led, request, exc.status_code, exc.reason, exc.detail)
            return JSONResponse(
                {"detail": exc.detail, "reason": exc.reason},
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return metrics_response(led)

    return Starlette(routes=[Route("/metrics", metrics)])


class _Follower(uvicorn.Server):
    """A server that leaves the signals to the API's server and stops when it does."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def run(
    api: uvicorn.Config,
    metrics: uvicorn.Config | None,
    sockets: list[socket.socket] | None = None,
    metrics_sockets: list[socket.socket] | None = None,
) -> None:
    """Serve the API (and the metrics listener) until the process is told to stop."""
    main = uvicorn.Server(api)
    if metrics is None:
        main.run(sockets=sockets)
        return
    follower = _Follower(metrics)

    async def both() -> Any:
        task = asyncio.create_task(follower.serve(sockets=metrics_sockets))
        try:
            await main.serve(sockets=sockets)
        finally:
            follower.should_exit = True
            await task

    with asyncio.Runner(loop_factory=api.get_loop_factory()) as runner:
        runner.run(both())
