"""Secrets and certificates read from files, each checked once, with one error naming its option.

Tokens stay off command lines (where `ps` shows them to every user of the machine) by living in
files: a systemd credential (`LoadCredential=`, under `$CREDENTIALS_DIRECTORY`), a Kubernetes
Secret volume, a mode-0600 file. A CA bundle becomes the `ssl.SSLContext` a client verifies the
ledger with; a server's certificate and key are loaded once before serving, so that a wrong file
is an InputError (exit 2) naming the flag or variable, not a traceback inside the server.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from gpucap.core.errors import InputError

_MAX_SECRET_BYTES = 64 * 1024  # far above any token or key; a device or a log file is refused


def read_secret(path: Path, field: str) -> str:
    """The secret held in `path`, without the surrounding whitespace (the newline an editor or
    `echo` leaves); InputError naming `field` when it is unreadable, empty or not one line."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise InputError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_SECRET_BYTES:
        raise InputError(field, f"{path} is larger than {_MAX_SECRET_BYTES} bytes: not a secret")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InputError(field, f"{path} is not UTF-8 text") from None
    if not text:
        raise InputError(field, f"{path} is empty")
    if text.startswith("GPUCAP_") and "=" in text.split()[0]:
        raise InputError(field, f"{path} holds a KEY=VALUE line: write the secret alone")
    if not text.isprintable():
        raise InputError(field, f"{path} must hold the secret alone, on one line")
    return text


def client_context(ca_file: Path, field: str) -> ssl.SSLContext:
    """A client context that trusts exactly the PEM certificates in `ca_file` (not the system's
    store), with hostname checks; InputError naming `field` for a file without a certificate."""
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except OSError as exc:
        if isinstance(exc, ssl.SSLError):
            raise InputError(
                field, f"{ca_file} holds no PEM certificate ({exc.reason or exc})"
            ) from None
        raise InputError(field, f"cannot read {ca_file}: {exc.strerror or exc}") from None


class _EncryptedKeyError(Exception):
    """Raised from the password callback: a key that needs a password is refused, not prompted
    for on a terminal that a service does not have."""


def _no_password() -> bytes:
    raise _EncryptedKeyError


def check_server_pair(
    cert: Path, key: Path, cert_field: str = "--tls-cert", key_field: str = "--tls-key"
) -> None:
    """Load a server certificate chain and its private key as the server will; InputError
    naming the flag of the file at fault (a mismatched key names `key_field`)."""
    texts: dict[str, bytes] = {}
    for path, field in ((cert, cert_field), (key, key_field)):
        try:
            texts[field] = path.read_bytes()
        except OSError as exc:
            raise InputError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cadata=texts[cert_field].decode("ascii"))
    except (ssl.SSLError, ValueError):  # UnicodeDecodeError is a ValueError
        raise InputError(cert_field, f"{cert} holds no PEM certificate") from None
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKeyError:
        raise InputError(key_field, f"{key} is encrypted: give an unencrypted key") from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise InputError(key_field, f"{key} does not match the certificate {cert}") from None
        raise InputError(key_field, f"{key} holds no PEM private key") from None
