"""A small background HTTP server for one registry, with a clean stop.

prometheus_client's `start_http_server` returns the server and its thread but offers no stop;
`MetricsServer.close()` shuts the loop down, closes the socket and joins the thread.
"""

from __future__ import annotations

import threading
from types import TracebackType
from wsgiref.simple_server import WSGIServer

from prometheus_client.exposition import start_http_server
from prometheus_client.registry import CollectorRegistry

from gpucap.exporters.errors import MetricsServerError

_JOIN_TIMEOUT_SECONDS = 5.0


class MetricsServer:
    """A running metrics endpoint; `port` is the bound port (useful when 0 was asked for)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self._closed = False
        self.host = host
        self.port: int = server.server_port

    @property
    def url(self) -> str:
        """The scrape URL, e.g. ``http://127.0.0.1:9400/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(_JOIN_TIMEOUT_SECONDS)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def serve_registry(registry: CollectorRegistry, *, host: str, port: int) -> MetricsServer:
    """Start serving `registry` on `host:port`; raise `MetricsServerError` if it cannot bind."""
    if not 0 <= port <= 65535:
        raise MetricsServerError("metrics.port", f"expected 0..65535, got {port}")
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except (OSError, ValueError) as exc:
        raise MetricsServerError(
            "metrics.port", f"cannot serve metrics on {host}:{port}: {exc}"
        ) from exc
    return MetricsServer(server, thread, host)
