"""A loopback TCP proxy that can hold a server's answers back: the drills' way to kill a
process at the worst moment, after the ledger committed a report and before the agent heard."""

from __future__ import annotations

import contextlib
import re
import socket
import threading

_SEQ = re.compile(rb'"seq":\s*(\d+)')


class HoldingProxy:
    """A TCP proxy to `upstream_port` on 127.0.0.1; while `hold` is set, what the upstream
    answers is kept back (and dropped when the client goes away)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.hold = threading.Event()
        self.lock = threading.Lock()
        self.seqs: list[int] = []  # the seq of every request forwarded, in order
        self.withheld: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the upstream is down (killed): the client sees its connection drop
                client.close()
                continue
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, request: bool) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    if request:
                        self.seqs.extend(int(m) for m in _SEQ.findall(data))
                    elif self.hold.is_set():
                        self.withheld.append(data)
                        continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):  # already closed by the other pump
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self.server.close()
