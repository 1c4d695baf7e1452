"""The client commands against answers that are not a ledger's: exit 3 and one line, never a
traceback; GPUCAP_LEDGER; `-V`; country codes in any case."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gpucap import __version__
from gpucap.cli import main
from gpucap.ledger import note
from gpucap.ledger.app import headroom_answer
from gpucap.ledger.client import LedgerClient, mismatch
from gpucap.ledger.errors import UnavailableError
from gpucap.ledger.service import Ledger
from gpucap.ledger.tokens import Principal
from tests.ledger.support import gpucap

ADMIN = Principal("a", "operator", operator="root")
NIMBUS = Principal("b", "operator", operator="ops", entity="nimbus")
TOKEN = "gpc1.test.token"
KEY = note.verifier_key("example.org/log", Ed25519PrivateKey.generate().public_key())

# (status, content type, body, extra headers): what a proxy, a portal or another service says.
ANSWERS: dict[str, tuple[int, str, str, dict[str, str]]] = {
    "text": (200, "text/plain; charset=utf-8", "hello from a proxy\nsecond line\n", {}),
    "html": (200, "text/html", "<html>\n<body><h1>Sign in</h1></body>\n</html>\n", {}),
    "list": (200, "application/json", "[]", {}),
    "object": (200, "application/json", "{}", {}),
    "redirect": (302, "text/html", "<a href='/login'>moved</a>", {"Location": "/login"}),
}

# Every client command, without --ledger (given in front, or from GPUCAP_LEDGER).
COMMANDS: dict[str, list[str]] = {
    "headroom": ["headroom"],
    "whatif": ["whatif", "--site", "acme-ae-1", "--model", "h100-sxm5-80gb", "--count", "8"],
    "report": ["report", "--from", "2025-09-01", "--to", "2025-09-03"],
    "explain": ["explain", "--rule", "nveu_country_cap", "--scope", "entity:nimbus/country:AE"],
    "events": ["ledger", "events"],
    "nodes": ["ledger", "nodes"],
    "log verify": ["log", "verify", "--key", KEY],
}
SUBPROCESS = ("headroom", "whatif", "report")


@dataclass
class Served:
    """A loopback HTTP server that gives every request one answer and records the paths."""

    url: str
    paths: list[str] = field(default_factory=list)
    answer: tuple[int, str, str, dict[str, str]] = ANSWERS["object"]


@contextmanager
def serving(answer: tuple[int, str, str, dict[str, str]]) -> Iterator[Served]:
    served = Served("")
    served.answer = answer

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            served.paths.append(self.path.split("?")[0])
            self.rfile.read(int(self.headers.get("Content-Length") or 0))  # the request's body
            status, content_type, body, headers = served.answer
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._reply()

        def do_POST(self) -> None:
            self._reply()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gpucap: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUCAP_TOKEN", TOKEN)
    monkeypatch.delenv("GPUCAP_LEDGER", raising=False)
    monkeypatch.delenv("GPUCAP_DB", raising=False)
    monkeypatch.chdir(tmp_path)


# -- answers that are not a ledger's ------------------------------------------------------------
@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("command", SUBPROCESS)
def test_the_real_cli_turns_a_foreign_answer_into_exit_3(command: str, answer: str) -> None:
    with serving(ANSWERS[answer]) as served:
        proc = gpucap(
            *COMMANDS[command],
            "--ledger",
            served.url,
            env={"GPUCAP_TOKEN": TOKEN, "GPUCAP_LEDGER": ""},
        )
    assert proc.returncode == 3, proc.stderr
    line = one_error_line(proc.stderr)
    assert proc.stdout == ""
    assert served.paths, "the command never asked"
    if answer == "redirect":
        assert "HTTP 302 redirect to /login (not followed" in line
    elif answer in ("text", "html"):
        assert "the answer is not JSON" in line
    else:
        assert "unexpected answer" in line


@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in SUBPROCESS])
def test_every_client_command_turns_a_foreign_answer_into_exit_3(
    command: str, answer: str, env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with serving(ANSWERS[answer]) as served:
        code = main([*COMMANDS[command], "--ledger", served.url])
    out = capsys.readouterr()
    assert code == 3, out.err
    one_error_line(out.err)
    assert out.out == ""
    assert served.paths


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"verdict": "ok"}', "as_of is missing"),
        ('{"as_of": 1, "verdict": "ok"}', "as_of is an integer, not a string"),
        ('"a string"', "the answer is a string, not an object"),
        ("null", "the answer is null, not an object"),
    ],
)
def test_a_wrong_shape_names_the_field(body: str, reason: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=body, headers={"content-type": "application/json"})

    client = LedgerClient("http://ledger.test", TOKEN, transport=httpx.MockTransport(handler))
    with pytest.raises(UnavailableError, match=reason):
        client.headroom()


def test_a_refusal_with_an_html_page_is_one_line() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        page = "<html>\n<body>\nBad gateway\n</body>\n</html>"
        return httpx.Response(502, text=page, headers={"content-type": "text/html"})

    client = LedgerClient("http://ledger.test", TOKEN, transport=httpx.MockTransport(handler))
    with pytest.raises(UnavailableError) as info:
        client.nodes()
    assert str(info.value) == "/v1/nodes: HTTP 502: an HTML page, not a ledger answer"


def test_shapes_accept_only_what_they_name() -> None:
    shape = {"n": int, "xs": [{"a": str}], "b": (type(None), {"c": (int, float)})}
    assert mismatch({"n": 1, "xs": [{"a": "x", "more": 1}], "b": None, "new": 0}, shape) is None
    assert mismatch({"n": 1, "xs": [], "b": {"c": 2.5}}, shape) is None
    assert mismatch({"n": True, "xs": [], "b": None}, shape) == "n is a boolean, not an integer"
    assert mismatch({"n": 1, "xs": [{}], "b": None}, shape) == "xs[0].a is missing"
    assert mismatch({"n": 1, "xs": [], "b": {"c": "2"}}, shape) == (
        "b.c is a string, not an integer or a number"
    )


# -- GPUCAP_LEDGER ------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in ("events", "nodes")])
def test_gpucap_ledger_is_the_default_url(
    command: str, env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with serving(ANSWERS["list"]) as served:
        monkeypatch.setenv("GPUCAP_LEDGER", served.url)
        code = main(COMMANDS[command])
    assert code == 3
    line = one_error_line(capsys.readouterr().err)
    assert served.paths  # it asked the ledger GPUCAP_LEDGER names
    if command != "log verify":  # the auditor names the answer it could not use, not the URL
        assert served.url in line


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in ("events", "nodes")])
def test_no_ledger_at_all_is_exit_2_naming_the_flag(
    command: str, env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(COMMANDS[command]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == "gpucap: error: --ledger: give --ledger URL or set GPUCAP_LEDGER"


def test_no_ledger_at_all_from_the_real_cli() -> None:
    proc = gpucap("headroom", env={"GPUCAP_TOKEN": TOKEN, "GPUCAP_LEDGER": ""})
    assert proc.returncode == 2
    assert one_error_line(proc.stderr) == (
        "gpucap: error: --ledger: give --ledger URL or set GPUCAP_LEDGER"
    )


def test_a_bad_gpucap_ledger_is_named(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GPUCAP_LEDGER", "ftp://ledger.example")
    assert main(["headroom"]) == 2
    assert one_error_line(capsys.readouterr().err).startswith("gpucap: error: GPUCAP_LEDGER: ")
    monkeypatch.setenv("GPUCAP_LEDGER", "http://127.0.0.1:1")
    assert main(["headroom", "--ledger", "notaurl"]) == 2  # the flag wins, and is named
    assert one_error_line(capsys.readouterr().err).startswith("gpucap: error: --ledger: ")


@pytest.mark.parametrize("command", ["events", "nodes"])
def test_gpucap_ledger_does_not_switch_db_commands_to_http(
    command: str,
    env: None,
    ledger: Ledger,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with serving(ANSWERS["list"]) as served:
        monkeypatch.setenv("GPUCAP_LEDGER", served.url)
        code = main([*COMMANDS[command], "--db", db_url, "--format", "json"])
    assert code == 0, capsys.readouterr().err
    assert served.paths == []  # read from --db; only an explicit --ledger asks a ledger


def test_gpucap_ledger_serves_a_real_answer(
    env: None,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    doc = headroom_answer(ledger, ADMIN, "country:ae", "2025-09-30")
    with serving((200, "application/json", json.dumps(doc), {})) as served:
        monkeypatch.setenv("GPUCAP_LEDGER", served.url)
        code = main(["headroom", "--scope", "country:ae"])
    out = capsys.readouterr()
    assert code == (1 if doc["verdict"] == "breach" else 0), out.err
    assert out.err == ""
    assert "verdict" in out.out
    assert "known at" in out.out
    assert served.paths == ["/v1/headroom"]


# -- the version ---------------------------------------------------------------------------------
def test_dash_v_prints_the_version() -> None:
    short, long = gpucap("-V"), gpucap("--version")
    assert short.returncode == long.returncode == 0
    assert short.stdout == long.stdout == f"gpucap {__version__}\n"


# -- country codes in any case -------------------------------------------------------------------
@pytest.mark.parametrize("principal", [ADMIN, NIMBUS])
def test_a_lowercase_country_scope_answers_as_uppercase(
    ledger: Ledger, principal: Principal
) -> None:
    upper = headroom_answer(ledger, principal, "country:AE", "2025-09-30")
    lower = headroom_answer(ledger, principal, "country:ae", "2025-09-30")
    assert upper["checks"]
    assert lower["checks"] == upper["checks"]
    assert lower["verdict"] == upper["verdict"]


def test_explain_takes_a_lowercase_country(ledger: Ledger) -> None:
    ledger.integrator.run_once()
    upper = ledger.explain(ADMIN, "nveu_country_cap", "entity:nimbus/country:AE")
    lower = ledger.explain(ADMIN, "nveu_country_cap", "entity:nimbus/country:ae")
    assert lower["scope"] == "entity:nimbus/country:AE"
    assert {k: v for k, v in lower.items() if k != "provenance"} == {
        k: v for k, v in upper.items() if k != "provenance"
    }
    limited = ledger.explain(NIMBUS, "nveu_country_cap", "entity:nimbus/country:ae")
    assert limited["contributions"] == lower["contributions"]
