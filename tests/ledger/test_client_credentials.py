"""Where the client commands take their token and CA from, and the ledger's own secret files:
precedence, refusals naming the flag or variable (exit 2), and every client command taking
`--token-file` and `--ca-file`."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gpucap.core.errors import InputError
from gpucap.ledger import note
from gpucap.ledger.client import client_token, trust
from gpucap.ledger.settings import Settings
from tests.ledger.support import gpucap
from tests.tlstest import make_pki

KEY = note.verifier_key("example.org/log", Ed25519PrivateKey.generate().public_key())


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("gpc1.from.file\n", encoding="utf-8")
    return path


def test_the_flag_beats_both_variables(token_file: Path) -> None:
    environ = {"GPUCAP_TOKEN": "gpc1.env.var", "GPUCAP_TOKEN_FILE": "/nowhere"}
    assert client_token(token_file, environ, "a token") == "gpc1.from.file"


def test_the_file_variable_or_the_token_variable(token_file: Path) -> None:
    assert client_token(None, {"GPUCAP_TOKEN_FILE": str(token_file)}, "x") == "gpc1.from.file"
    assert client_token(None, {"GPUCAP_TOKEN": "gpc1.env.var"}, "x") == "gpc1.env.var"
    # An empty variable counts as unset, as everywhere else.
    both = {"GPUCAP_TOKEN_FILE": "", "GPUCAP_TOKEN": "gpc1.env.var"}
    assert client_token(None, both, "x") == "gpc1.env.var"


def test_both_variables_are_refused(token_file: Path) -> None:
    environ = {"GPUCAP_TOKEN": "gpc1.env.var", "GPUCAP_TOKEN_FILE": str(token_file)}
    with pytest.raises(InputError) as info:
        client_token(None, environ, "a token")
    assert info.value.path == "GPUCAP_TOKEN_FILE"
    assert "not both" in info.value.reason


def test_no_token_names_every_way_to_give_one() -> None:
    with pytest.raises(InputError) as info:
        client_token(None, {}, "an operator token")
    assert info.value.path == "GPUCAP_TOKEN"
    assert "GPUCAP_TOKEN_FILE" in info.value.reason
    assert "--token-file" in info.value.reason
    assert info.value.reason.endswith("an operator token")


@pytest.mark.parametrize(("flag", "field"), [(True, "--token-file"), (False, "GPUCAP_TOKEN_FILE")])
def test_an_empty_token_file_names_where_it_was_given(
    tmp_path: Path, flag: bool, field: str
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    environ = {} if flag else {"GPUCAP_TOKEN_FILE": str(empty)}
    with pytest.raises(InputError) as info:
        client_token(empty if flag else None, environ, "x")
    assert info.value.path == field
    assert "is empty" in info.value.reason


def test_the_ca_comes_from_the_flag_then_the_variable(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    assert trust(None, {}) is True
    for context in (trust(pki.ca, {"GPUCAP_CA_FILE": "/nowhere"}),
                    trust(None, {"GPUCAP_CA_FILE": str(pki.ca)})):  # fmt: skip
        assert isinstance(context, ssl.SSLContext)
        assert len(context.get_ca_certs()) == 1
    with pytest.raises(InputError) as info:
        trust(None, {"GPUCAP_CA_FILE": str(pki.key)})
    assert info.value.path == "GPUCAP_CA_FILE"


def _blank() -> dict[str, str]:
    return {k: "" for k in os.environ if k.startswith("GPUCAP_")}


COMMANDS = [
    ("headroom",),
    ("whatif", "--site", "s", "--model", "h100-sxm5-80gb", "--count", "1"),
    ("report", "--from", "2026-01-01", "--to", "2026-01-02"),
    ("explain", "--rule", "r", "--scope", "country:AE"),
    ("ledger", "events"),
    ("ledger", "nodes"),
    ("log", "verify", "--key", KEY),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_client_command_takes_a_token_file_and_a_ca_file(
    tmp_path: Path, token_file: Path, command: tuple[str, ...]
) -> None:
    ledger = ("--ledger", "https://127.0.0.1:1")
    missing = gpucap(*command, *ledger, "--token-file", str(tmp_path / "none"), env=_blank())
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.startswith("gpucap: error: --token-file: cannot read ")
    bad_ca = gpucap(
        *command, *ledger, "--token-file", str(token_file), "--ca-file", str(token_file),
        env=_blank(),
    )  # fmt: skip
    assert bad_ca.returncode == 2, bad_ca.stderr
    assert bad_ca.stderr.startswith("gpucap: error: --ca-file: ")
    # Both files good: the command gets as far as the (absent) ledger, exit 3 in one line.
    pki = make_pki(tmp_path)
    gone = gpucap(
        *command, *ledger, "--token-file", str(token_file), "--ca-file", str(pki.ca), env=_blank()
    )
    assert gone.returncode == 3, gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1
    assert "cannot reach https://127.0.0.1:1" in gone.stderr


@pytest.mark.parametrize(
    ("file_var", "var", "name"),
    [
        ("GPUCAP_LEDGER_SECRET_FILE", "GPUCAP_LEDGER_SECRET", "secret"),
        ("GPUCAP_METRICS_TOKEN_FILE", "GPUCAP_METRICS_TOKEN", "metrics_token"),
    ],
)
def test_the_ledger_reads_its_secrets_from_files(
    tmp_path: Path, file_var: str, var: str, name: str
) -> None:
    path = tmp_path / "secret"
    path.write_text("a-secret-of-sixteen-plus\n")
    assert getattr(Settings.from_env({file_var: str(path)}), name) == "a-secret-of-sixteen-plus"
    with pytest.raises(InputError) as both:
        Settings.from_env({file_var: str(path), var: "a-secret-of-sixteen-plus"})
    assert both.value.path == file_var
    assert "not both" in both.value.reason
    with pytest.raises(InputError) as gone:
        Settings.from_env({file_var: str(tmp_path / "none")})
    assert gone.value.path == file_var
    assert gone.value.reason.startswith("cannot read ")


def test_a_short_metrics_token_from_a_file_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_text("short\n")
    with pytest.raises(InputError, match="at least 16 characters"):
        Settings.from_env({"GPUCAP_METRICS_TOKEN_FILE": str(path)})


def test_tls_settings_come_in_pairs(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    paired = Settings.from_env({"GPUCAP_LEDGER_TLS_CERT": str(cert)}, tls_key=key)
    assert (paired.tls_cert, paired.tls_key) == (cert, key)
    with pytest.raises(InputError) as info:
        Settings.from_env({"GPUCAP_LEDGER_TLS_KEY": str(key)})
    assert info.value.path == "--tls-cert"
