"""C2SP signed notes and tlog checkpoints with Ed25519 keys (pure: text in, text or values out).

Checkpoint body (c2sp.org/tlog-checkpoint), every line ending in "\\n":
    <origin>                    the log's name; the ledger uses it as the key name too
    <size>                      tree size in decimal ASCII, no sign, no leading zero (except "0")
    <root>                      standard base64 (with padding) of the 32-byte RFC 9162 root
    [<extension line>...]       optional, non-empty; kept when parsed, never emitted by us
Signed note (c2sp.org/signed-note): the body, one blank line, then one or more lines
    "— <name> <base64(key id || signature)>\\n"     (U+2014 EM DASH, then a space)
where the signature is Ed25519 over the body's UTF-8 bytes (through its final newline, without the
blank line). Key id = SHA-256(name || 0x0A || 0x01 || public key)[:4]. Verifier key string:
    <name>+<key id as 8 lowercase hex digits>+<base64(0x01 || 32-byte public key)>
A name is non-empty with no whitespace and no "+". A note is valid UTF-8 with no control
character but newline. Opening a note ignores lines by other keys (another name or key id), fails
on any line by ours that does not verify, needs at least one that does, and refuses over 100
signature lines. Base64 must be canonical. Malformed or forged notes raise VerificationError.
`open_checkpoint` also requires the origin to be the verifier's name unless told another origin.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gpucap.core.errors import InputError
from gpucap.ledger.errors import VerificationError

MAX_SIGNATURES = 100
ROOT_SIZE = 32
_ALG_ED25519 = b"\x01"
_SIG_PREFIX = "\u2014 "
_NAME = re.compile(r"[^\s+]+")
_SIZE = re.compile(r"0|[1-9][0-9]*")
_KEY_ID = re.compile(r"[0-9a-f]{8}")


@dataclass(frozen=True)
class Verifier:
    """A trusted Ed25519 note key: the name it signs as, its 4-byte key id, its raw public key."""

    name: str
    key_id: bytes
    public_key: bytes


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint; `body_text` is the exact signed text, for storing or re-checking."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...]
    body_text: str


def _b64decode(text: str) -> bytes | None:
    """Strict standard base64: the alphabet, padding and canonical trailing bits, else None."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode() == text else None


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def is_valid_name(name: str) -> bool:
    """A key or log name: non-empty, no whitespace, no "+" (which separates verifier-key fields)."""
    return _NAME.fullmatch(name) is not None


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte id of an Ed25519 key under `name`, as in signature lines and verifier keys."""
    return hashlib.sha256(name.encode() + b"\n" + _ALG_ED25519 + public_key).digest()[:4]


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key string that clients pin (`<name>+<hex id>+<base64 key>`)."""
    if not is_valid_name(name):
        raise ValueError(f"invalid key name {name!r}")
    raw = _raw(public_key)
    encoded = base64.b64encode(_ALG_ED25519 + raw).decode()
    return f"{name}+{key_id(name, raw).hex()}+{encoded}"


def parse_verifier_key(text: str, path: str = "--key") -> Verifier:
    """Parse a verifier key string; InputError(path, ...) if malformed or its id does not match."""
    parts = text.strip().split("+", 2)
    if len(parts) != 3 or not is_valid_name(parts[0]) or not _KEY_ID.fullmatch(parts[1]):
        raise InputError(path, "not a verifier key <name>+<8 hex digits>+<base64 key>")
    name, hex_id, encoded = parts
    raw = _b64decode(encoded)
    if raw is None or len(raw) != 1 + 32 or raw[:1] != _ALG_ED25519:
        raise InputError(path, "the key is not base64 of 0x01 and a 32-byte Ed25519 public key")
    if key_id(name, raw[1:]).hex() != hex_id:
        raise InputError(path, f"key id {hex_id} does not match the name and public key")
    return Verifier(name, bytes.fromhex(hex_id), raw[1:])


def sign_note(body_text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """A signed note of `body_text` with one signature line by `name`'s key."""
    if not body_text.endswith("\n") or _bad_chars(body_text) or not is_valid_name(name):
        raise ValueError("a note body must end in a newline, have no controls; name must be valid")
    body = body_text.encode()
    kid = key_id(name, _raw(private_key.public_key()))
    sig = base64.b64encode(kid + private_key.sign(body)).decode()
    return f"{body_text}\n{_SIG_PREFIX}{name} {sig}\n"


def _bad_chars(text: str) -> bool:
    return any(ord(c) < 0x20 and c != "\n" for c in text)


def open_note(text: str | bytes, verifier: Verifier) -> str:
    """The body text of a signed note that `verifier`'s key signed, or raise VerificationError."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise VerificationError("note", "is not valid UTF-8") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise VerificationError("note", "is not valid UTF-8") from None
    if _bad_chars(text):
        raise VerificationError("note", "contains a control character other than newline")
    split = text.rfind("\n\n")
    if split < 0:
        raise VerificationError("note", "has no blank line before the signatures")
    body_text, block = text[: split + 1], text[split + 2 :]
    if not block.endswith("\n"):
        raise VerificationError("note", "does not end with a signature line and a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise VerificationError("note", f"has more than {MAX_SIGNATURES} signature lines")
    public_key = Ed25519PublicKey.from_public_bytes(verifier.public_key)
    body, verified = body_text.encode(), 0
    for i, line in enumerate(lines):
        where = f"note.signature[{i}]"
        if not line.startswith(_SIG_PREFIX):
            raise VerificationError(where, "does not start with an em dash and a space")
        name, _, encoded = line[len(_SIG_PREFIX) :].partition(" ")
        if not is_valid_name(name):
            raise VerificationError(where, "has no valid key name")
        raw = _b64decode(encoded)
        if raw is None or len(raw) < 5:
            raise VerificationError(where, "is not canonical base64 of a key id and a signature")
        if name != verifier.name or raw[:4] != verifier.key_id:
            continue  # another key: a witness or an old key, neither trusted nor refused
        try:
            public_key.verify(raw[4:], body)
        except InvalidSignature:
            raise VerificationError(where, f"signature by {name} does not verify") from None
        verified += 1
    if not verified:
        raise VerificationError("note", f"has no signature by {verifier.name}")
    return body_text


def checkpoint_body(origin: str, size: int, root: bytes) -> str:
    """The checkpoint body text for a tree (no extension lines)."""
    if (
        not origin
        or "\n" in origin
        or _bad_chars(origin)
        or not 0 <= size < 1 << 64
        or len(root) != ROOT_SIZE
    ):
        raise ValueError("a checkpoint needs a one-line origin, 0 <= size < 2**64, a 32-byte root")
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def parse_checkpoint(body_text: str) -> Checkpoint:
    """Parse a checkpoint body strictly (no signature check); VerificationError if malformed."""
    if not body_text.endswith("\n"):
        raise VerificationError("checkpoint", "does not end with a newline")
    lines = body_text[:-1].split("\n")
    if len(lines) < 3:
        raise VerificationError("checkpoint", "needs an origin, a size and a root line")
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise VerificationError("checkpoint.origin", "is empty")
    if not _SIZE.fullmatch(size_text) or int(size_text) >= 1 << 64:
        raise VerificationError("checkpoint.size", "is not a decimal below 2**64 (no sign, no 0s)")
    root = _b64decode(root_text)
    if root is None or len(root) != ROOT_SIZE:
        raise VerificationError("checkpoint.root", "is not canonical base64 of 32 bytes")
    if "" in extensions:
        raise VerificationError("checkpoint", "has an empty extension line")
    return Checkpoint(origin, int(size_text), root, tuple(extensions), body_text)


def sign_checkpoint(
    origin: str, size: int, root: bytes, name: str, private_key: Ed25519PrivateKey
) -> str:
    """The whole signed checkpoint note for a tree, signed by `name`'s key."""
    return sign_note(checkpoint_body(origin, size, root), name, private_key)


def open_checkpoint(
    note_text: str | bytes, verifier: Verifier, origin: str | None = None
) -> Checkpoint:
    """A checkpoint signed by `verifier` whose origin is `origin` (default: the verifier's name)."""
    checkpoint = parse_checkpoint(open_note(note_text, verifier))
    want = verifier.name if origin is None else origin
    if checkpoint.origin != want:
        raise VerificationError("checkpoint.origin", f"is {checkpoint.origin!r}, not {want!r}")
    return checkpoint


def generate_private_key_pem() -> str:
    """A new Ed25519 private key as unencrypted PKCS#8 PEM text (store it with mode 0600)."""
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def load_private_key_pem(pem: str | bytes, path: str) -> Ed25519PrivateKey:
    """The Ed25519 key in PKCS#8 PEM text read from `path`; InputError(path, ...) otherwise."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InputError(path, "is not an unencrypted PKCS#8 PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(path, "is not an Ed25519 private key")
    return key
