"""`gpucap ledger serve --tls-cert --tls-key` as a real process, with a CA made in the test: the
clients (`gpucap headroom`, the agent) verify it with `--ca-file`, fail cleanly without it, and a
wrong certificate or key is exit 2 naming its flag before anything is served."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gpucap.ledger import tokens
from gpucap.ledger.listeners import beyond_loopback
from gpucap.ledger.settings import Settings, utc_now
from gpucap.ledger.store import Store
from tests.ledger.support import REGISTRY, free_port, gpucap
from tests.tlstest import Pki, make_pki

pytestmark = pytest.mark.slow
EVERYWHERE = "0.0.0.0"  # noqa: S104 (binding every interface is what the warning is about)


@dataclass(frozen=True)
class Served:
    url: str
    log: Path  # the server's stdout and stderr
    proc: subprocess.Popen[bytes]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    return make_pki(folder)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY, encoding="utf-8")
    return path


def _token_file(db_url: str, path: Path, kind: str, **subject: str) -> Path:
    store = Store.open(Settings(db_url=db_url))
    try:
        token = tokens.issue(store, kind, utc_now(), None, **subject)[1]
    finally:
        store.close()
    path.write_text(token + "\n", encoding="utf-8")
    return path


def _env() -> dict[str, str]:
    """The test's environment without GPUCAP_* variables, which would change what is tested."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GPUCAP_")}


def _ready(
    url: str, verify: ssl.SSLContext | bool, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"ledger exited early ({proc.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"ledger not ready in 60 s:\n{log.read_text()}"
        time.sleep(0.1)


@contextmanager
def serve(
    db_url: str,
    registry: Path,
    log: Path,
    *flags: str,
    host: str = "127.0.0.1",
    verify: ssl.SSLContext | bool = True,
    env: dict[str, str] | None = None,
) -> Iterator[Served]:
    """`gpucap ledger serve FLAGS` on a free port; yields once /readyz answers (checked on
    loopback, over https when `verify` is a context)."""
    port = free_port()
    scheme = "https" if isinstance(verify, ssl.SSLContext) else "http"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpucap", "ledger", "serve", "--registry", str(registry),
             "--db", db_url, "--host", host, "--port", str(port), *flags],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**_env(), "GPUCAP_REVOCATION_TTL_S": "0", **(env or {})},
        )  # fmt: skip
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        _ready(url, verify, proc, log)
        yield Served(url, log, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _client(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return gpucap(
        *args, env={**{k: "" for k in os.environ if k.startswith("GPUCAP_")}, **(env or {})}
    )


@pytest.fixture
def tls(tmp_path: Path, pki: Pki, db_url: str, registry: Path) -> Iterator[Served]:
    ca = ssl.create_default_context(cafile=str(pki.ca))
    tls_flags = ("--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    with serve(db_url, registry, tmp_path / "ledger.log", *tls_flags, verify=ca) as served:
        yield served


def test_headroom_over_tls_verifies_the_ledger_with_the_ca_file(
    tmp_path: Path, pki: Pki, db_url: str, tls: Served
) -> None:
    token = _token_file(db_url, tmp_path / "operator.token", "operator", operator="ops")
    flags = ("--ledger", tls.url, "--token-file", str(token), "--format", "json")
    ok = _client("headroom", *flags, "--ca-file", str(pki.ca))
    assert ok.returncode == 0, ok.stderr
    assert '"verdict": "ok"' in ok.stdout
    # The same CA from the environment.
    from_env = _client("headroom", *flags, env={"GPUCAP_CA_FILE": str(pki.ca)})
    assert from_env.returncode == 0, from_env.stderr
    # Without the CA the certificate is not trusted: exit 3, one line that says what to give.
    untrusted = _client("headroom", *flags)
    assert untrusted.returncode == 3
    lines = untrusted.stderr.strip().splitlines()
    assert len(lines) == 1, untrusted.stderr
    assert "not trusted" in lines[0]
    assert "--ca-file" in lines[0]
    # Trusting another CA (the server's own certificate is no CA) fails the same way.
    wrong = _client("headroom", *flags, "--ca-file", str(pki.cert))
    assert wrong.returncode == 3
    assert len(wrong.stderr.strip().splitlines()) == 1


def test_a_plain_http_client_of_a_tls_ledger_fails_in_one_line(
    tmp_path: Path, db_url: str, tls: Served
) -> None:
    token = _token_file(db_url, tmp_path / "operator.token", "operator", operator="ops")
    plain = tls.url.replace("https://", "http://")
    proc = _client("headroom", "--ledger", plain, "--token-file", str(token))
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gpucap: error: ledger: cannot reach http://127.0.0.1:")
    # The ledger keeps serving TLS clients after the plain-text one.
    assert httpx.get(f"{tls.url}/healthz", verify=ssl.create_default_context(
        cafile=str(tmp_path / "pki" / "ca.pem"))).status_code == 200  # fmt: skip


def test_an_agent_reports_over_tls_with_the_ca_file(
    tmp_path: Path, pki: Pki, db_url: str, tls: Served
) -> None:
    node = _token_file(db_url, tmp_path / "node.token", "node", node_id="n1", site_id="acme-ae-1")
    operator = _token_file(db_url, tmp_path / "operator.token", "operator", operator="ops")
    ca = ssl.create_default_context(cafile=str(pki.ca))
    agent = subprocess.Popen(
        [sys.executable, "-m", "gpucap", "agent", "run", "--ledger", tls.url,
         "--token-file", str(node), "--ca-file", str(pki.ca), "--node-id", "n1",
         "--site", "acme-ae-1", "--fake", "dgx-h100", "--interval", "0.5",
         "--spool", str(tmp_path / "spool")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(),
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {operator.read_text().strip()}"}
    try:
        deadline = time.monotonic() + 60
        devices = 0
        while devices == 0:
            assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
            assert time.monotonic() < deadline, "no report arrived over TLS in 60 s"
            time.sleep(0.3)
            nodes = httpx.get(f"{tls.url}/v1/nodes", headers=headers, verify=ca).json()["nodes"]
            devices = sum(n["devices"] for n in nodes if n["node"] == "n1")
        assert devices == 8  # the dgx-h100 scenario's eight GPUs
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        if agent.stderr:
            agent.stderr.close()


def test_an_agent_without_the_ca_file_retries_and_logs_why(
    tmp_path: Path, db_url: str, tls: Served
) -> None:
    node = _token_file(db_url, tmp_path / "node.token", "node", node_id="n1", site_id="acme-ae-1")
    agent = subprocess.Popen(
        [sys.executable, "-m", "gpucap", "agent", "run", "--ledger", tls.url,
         "--token-file", str(node), "--node-id", "n1", "--site", "acme-ae-1",
         "--fake", "dgx-h100", "--interval", "0.5", "--retry-initial", "0.1",
         "--spool", str(tmp_path / "spool")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(),
        text=True,
    )  # fmt: skip
    try:
        time.sleep(4)
        assert agent.poll() is None, "the agent must keep running and retry"
    finally:
        agent.terminate()
        _, err = agent.communicate(timeout=30)
    assert "CERTIFICATE_VERIFY_FAILED" in err
    assert list((tmp_path / "spool").glob("**/*.json")), "the reports stay spooled"


@pytest.mark.parametrize(
    ("flags", "field", "reason"),
    [
        (("--tls-cert", "{cert}"), "--tls-key", "give --tls-cert and --tls-key together"),
        (("--tls-key", "{key}"), "--tls-cert", "give --tls-cert and --tls-key together"),
        (("--tls-cert", "{missing}", "--tls-key", "{key}"), "--tls-cert", "cannot read"),
        (("--tls-cert", "{key}", "--tls-key", "{key}"), "--tls-cert", "holds no PEM certificate"),
        (("--tls-cert", "{cert}", "--tls-key", "{missing}"), "--tls-key", "cannot read"),
        (("--tls-cert", "{cert}", "--tls-key", "{other}"), "--tls-key", "does not match"),
        (("--tls-cert", "{cert}", "--tls-key", "{ca}"), "--tls-key", "holds no PEM private key"),
        (("--tls-cert", "{cert}", "--tls-key", "{encrypted}"), "--tls-key", "is encrypted"),
    ],
)
def test_a_wrong_certificate_or_key_is_exit_2_naming_the_flag(
    tmp_path: Path, pki: Pki, registry: Path, flags: tuple[str, ...], field: str, reason: str
) -> None:
    names = {
        "cert": pki.cert,
        "key": pki.key,
        "other": pki.other_key,
        "encrypted": pki.encrypted_key,
        "ca": pki.ca,
        "missing": tmp_path / "missing.pem",
    }
    args = [flag.format(**names) for flag in flags]
    db = tmp_path / "never.db"
    proc = _client("ledger", "serve", "--registry", str(registry), "--db", f"sqlite:///{db}",
                   "--port", str(free_port()), *args)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"gpucap: error: {field}: ")
    assert reason in lines[0]
    assert not db.exists(), "refused before the database is opened"


def test_tls_files_from_the_environment_serve_https(
    tmp_path: Path, pki: Pki, db_url: str, registry: Path
) -> None:
    ca = ssl.create_default_context(cafile=str(pki.ca))
    env = {"GPUCAP_LEDGER_TLS_CERT": str(pki.cert), "GPUCAP_LEDGER_TLS_KEY": str(pki.key)}
    with serve(db_url, registry, tmp_path / "env.log", verify=ca, env=env) as served:
        assert served.url.startswith("https://")
        assert httpx.get(f"{served.url}/healthz", verify=ca).status_code == 200


def test_workers_and_the_metrics_listener_serve_tls_too(
    tmp_path: Path, pki: Pki, db_url: str, registry: Path
) -> None:
    ca = ssl.create_default_context(cafile=str(pki.ca))
    metrics_port = free_port()
    flags = ("--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--workers", "2",
             "--metrics-port", str(metrics_port))  # fmt: skip
    with serve(db_url, registry, tmp_path / "ledger.log", *flags, verify=ca) as served:
        for _ in range(4):  # answered by either worker
            assert httpx.get(f"{served.url}/healthz", verify=ca).status_code == 200
        metrics = httpx.get(f"https://127.0.0.1:{metrics_port}/metrics", verify=ca)
        assert metrics.status_code == 200
        assert "gpucap_" in metrics.text
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)


def test_plain_http_beyond_loopback_is_logged_as_a_warning(
    tmp_path: Path, pki: Pki, db_url: str, registry: Path
) -> None:
    warning = "serves plain HTTP on 0.0.0.0"
    with serve(db_url, registry, tmp_path / "open.log", host=EVERYWHERE) as served:
        pass
    assert warning in served.log.read_text()
    with serve(db_url, registry, tmp_path / "loopback.log") as served:
        pass
    assert "plain HTTP" not in served.log.read_text()
    ca = ssl.create_default_context(cafile=str(pki.ca))
    tls_flags = ("--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    with serve(db_url, registry, tmp_path / "tls.log", *tls_flags, host=EVERYWHERE, verify=ca) as s:
        pass
    assert "plain HTTP" not in s.log.read_text()


@pytest.mark.parametrize(
    ("host", "beyond"),
    [
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("::1", False),
        ("[::1]", False),
        ("localhost", False),
        ("LOCALHOST", False),
        (EVERYWHERE, True),
        ("::", True),
        ("10.0.0.5", True),
        ("192.168.1.20", True),
        ("ledger.example.internal", True),
        ("", True),
    ],
)
def test_which_addresses_are_beyond_loopback(host: str, beyond: bool) -> None:
    assert beyond_loopback(host) is beyond
