"""Secret files and TLS files: what is accepted, and the one error naming the option otherwise."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from gpucap.core.credfiles import check_server_pair, client_context, read_secret
from gpucap.core.errors import InputError
from tests.tlstest import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize(
    ("content", "secret"),
    [
        (b"gpc1.abc.def", "gpc1.abc.def"),
        (b"gpc1.abc.def\n", "gpc1.abc.def"),
        (b"gpc1.abc.def\r\n", "gpc1.abc.def"),
        (b"  gpc1.abc.def \n\n", "gpc1.abc.def"),
        (b"a secret with spaces\n", "a secret with spaces"),
    ],
)
def test_a_secret_file_gives_its_text_without_surrounding_whitespace(
    tmp_path: Path, content: bytes, secret: str
) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    assert read_secret(path, "--token-file") == secret


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "is empty"),
        (b" \n\n", "is empty"),
        (b"first\nsecond\n", "must hold the secret alone, on one line"),
        (b"GPUCAP_TOKEN=gpc1.abc.def\n", "holds a KEY=VALUE line"),
        (b"\xff\xfe", "is not UTF-8 text"),
        (b"x" * (64 * 1024 + 1), "is larger than"),
    ],
)
def test_a_bad_secret_file_names_the_option(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_secret(path, "GPUCAP_TOKEN_FILE")
    assert info.value.path == "GPUCAP_TOKEN_FILE"
    assert reason in info.value.reason
    assert str(path) in info.value.reason


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_an_unreadable_secret_file_names_the_option(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "secret"
    if kind == "folder":
        path.mkdir()
    with pytest.raises(InputError) as info:
        read_secret(path, "--token-file")
    assert info.value.path == "--token-file"
    assert info.value.reason.startswith(f"cannot read {path}: ")


def test_a_ca_file_gives_a_verifying_context(pki: Pki) -> None:
    context = client_context(pki.ca, "--ca-file")
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "gpucap test CA"),),)
    ]


@pytest.mark.parametrize(
    ("name", "reason"),
    [("missing", "cannot read"), ("key", "holds no PEM certificate"), ("empty", "no PEM")],
)
def test_a_bad_ca_file_names_the_option(tmp_path: Path, pki: Pki, name: str, reason: str) -> None:
    (tmp_path / "empty").write_text("")
    path = {"missing": tmp_path / "nope.pem", "key": pki.key, "empty": tmp_path / "empty"}[name]
    with pytest.raises(InputError) as info:
        client_context(path, "GPUCAP_CA_FILE")
    assert info.value.path == "GPUCAP_CA_FILE"
    assert reason in info.value.reason


def test_a_matching_certificate_and_key_pass(pki: Pki) -> None:
    check_server_pair(pki.cert, pki.key)


def test_a_combined_pem_serves_as_both_files(tmp_path: Path, pki: Pki) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(pki.cert.read_bytes() + pki.key.read_bytes())
    check_server_pair(both, both)


@pytest.mark.parametrize(
    ("cert", "key", "field", "reason"),
    [
        ("missing", "key", "--tls-cert", "cannot read"),
        ("cert", "missing", "--tls-key", "cannot read"),
        ("key", "key", "--tls-cert", "holds no PEM certificate"),
        ("binary", "key", "--tls-cert", "holds no PEM certificate"),
        ("cert", "other", "--tls-key", "does not match the certificate"),
        ("cert", "encrypted", "--tls-key", "is encrypted"),
        ("cert", "ca", "--tls-key", "holds no PEM private key"),
    ],
)
def test_a_wrong_server_pair_names_the_file_at_fault(
    tmp_path: Path, pki: Pki, cert: str, key: str, field: str, reason: str
) -> None:
    (tmp_path / "binary").write_bytes(b"\x30\x82\xff\x00")
    files = {
        "cert": pki.cert,
        "key": pki.key,
        "other": pki.other_key,
        "encrypted": pki.encrypted_key,
        "ca": pki.ca,
        "binary": tmp_path / "binary",
        "missing": tmp_path / "missing.pem",
    }
    with pytest.raises(InputError) as info:
        check_server_pair(files[cert], files[key])
    assert info.value.path == field
    assert reason in info.value.reason
