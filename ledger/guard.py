"""Slow and idle clients: the HTTP protocol `gpucap ledger serve` runs, with deadlines.

uvicorn bounds only the idle time between keep-alive requests. A client that opens a connection
and trickles its headers, or its body, holds a connection (a file descriptor) for as long as it
likes, and a thousand of them exhaust the process's descriptors (systemd's default LimitNOFILE
is 1,024). This protocol closes a connection whose request headers have not all arrived
`header_timeout_s` after the connection opened or the request's first byte, and one whose body
has not all arrived `body_timeout_s` after its headers. uvicorn's `limit_concurrency` answers
503 beyond a number of connections and requests; the unit raises LimitNOFILE above it.
Written here because uvicorn has no such option: this is its own protocol, with two timers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_logger = logging.getLogger("gpucap.ledger")


def guarded_protocol(header_timeout_s: float, body_timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the two deadlines (pass it as uvicorn's `http`)."""

    class Guarded(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self, seconds: float, what: str) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expired, what)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self, what: str) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
                _logger.warning("closed the connection of %s: %s", client, what)
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm(header_timeout_s, f"no request headers within {header_timeout_s:g} s")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._deadline is None:  # a keep-alive connection's next request
                self._arm(header_timeout_s, f"request headers took over {header_timeout_s:g} s")

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._arm(body_timeout_s, f"request body took over {body_timeout_s:g} s")

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return Guarded
