"""Slow and idle clients against a real `gpucap ledger serve`: bounded header and body times,
a connection cap answered with 503, and a server that keeps answering meanwhile."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from gpucap.ledger import tokens
from gpucap.ledger.settings import Settings, utc_now
from gpucap.ledger.store import Store
from tests.ledger.support import REGISTRY, ledger_server, report

pytestmark = pytest.mark.slow


def _slow(port: int, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(first)
    return sock


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """Whether the server closes the connection within `within_s` (whatever it sent first)."""
    deadline = time.monotonic() + within_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(65536) == b"":
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def _node_token(db_url: str) -> str:
    store = Store.open(Settings(db_url=db_url))
    try:
        return tokens.issue(store, "node", utc_now(), None, node_id="n1", site_id="acme-ae-1")[1]
    finally:
        store.close()


def test_slow_clients_are_cut_off_while_the_ledger_keeps_answering(
    tmp_path: Path, db_url: str
) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    token = _node_token(db_url)
    env = {"GPUCAP_LEDGER_HEADER_TIMEOUT_S": "2", "GPUCAP_LEDGER_BODY_TIMEOUT_S": "3"}
    with ledger_server(db_url, registry, env) as url:
        port = int(url.rsplit(":", 1)[1])
        started = time.monotonic()
        trickling = [
            _slow(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ") for _ in range(200)
        ]
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        head = (
            "POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n{{"
        )
        slow_body = _slow(port, head.encode())
        # Meanwhile the ledger answers health checks and reports at once.
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        posted = httpx.post(
            f"{url}/v1/reports",
            json=report(seq=1),
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        assert posted.json() == {"status": "accepted", "seq": 1}
        # Every slow connection is closed by the server within its deadline (and some slack).
        assert all(_closed_by_server(s, 6) for s in trickling + idle)
        assert _closed_by_server(slow_body, 6)
        assert time.monotonic() - started < 12
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        for s in [*trickling, *idle, slow_body]:
            s.close()


def test_connections_beyond_the_limit_get_503(tmp_path: Path, db_url: str) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    env = {"GPUCAP_LEDGER_LIMIT_CONCURRENCY": "5", "GPUCAP_LEDGER_HEADER_TIMEOUT_S": "30"}
    with ledger_server(db_url, registry, env) as url:
        port = int(url.rsplit(":", 1)[1])
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        time.sleep(0.3)
        refused = httpx.get(f"{url}/healthz", timeout=5)
        assert refused.status_code == 503
        for s in held:
            s.close()
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/healthz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the cap did not lift once connections closed"
            time.sleep(0.1)


@pytest.mark.parametrize("port", ["0", "99999", "-1"])
def test_ports_outside_1_to_65535_are_refused(port: str) -> None:
    from gpucap.core.errors import InputError

    with pytest.raises(InputError) as info:
        Settings.from_env({}, port=int(port))
    assert "1 to 65535" in info.value.reason
