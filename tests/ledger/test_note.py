"""Signed notes and checkpoints: Go reference vectors, round trips, forged and malformed notes.

The PeterNeumann and EnochRoot keys, signatures and malformed notes are from golang.org/x/mod
`sumdb/note` (the package documentation in note.go and note_test.go; BSD-3-Clause), an
independent implementation of the same format.
"""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gpucap.core.errors import InputError
from gpucap.ledger import note
from gpucap.ledger.errors import VerificationError

PETER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
ENOCH_KEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6"
    "KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WW"
    "d1RvMc+QQ=\n"
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
ORIGIN = "ledger.example/gpucap"
VERIFIER = note.parse_verifier_key(note.verifier_key(ORIGIN, KEY.public_key()))
ROOT = bytes(range(32, 64))


def other_signature_line(name: str, body: str, seed: int) -> str:
    """A valid signature line by some other Ed25519 key (a witness the verifier does not know)."""
    other = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return note.sign_note(body, name, other).rsplit("\n\n", 1)[1]


# --- the Go reference vectors ---------------------------------------------------------------


def test_go_verifier_key_and_key_id() -> None:
    peter = note.parse_verifier_key(PETER_KEY)
    assert peter.name == "PeterNeumann"
    assert peter.key_id == bytes.fromhex("c74f20a3")
    assert note.key_id(peter.name, peter.public_key) == peter.key_id
    public = Ed25519PrivateKey.from_private_bytes(PETER_SEED).public_key()
    assert note.verifier_key("PeterNeumann", public) == PETER_KEY


def test_go_signed_note_opens_and_our_signing_reproduces_it() -> None:
    assert note.open_note(TEXT + "\n" + PETER_SIG, note.parse_verifier_key(PETER_KEY)) == TEXT
    signer = Ed25519PrivateKey.from_private_bytes(PETER_SEED)
    assert note.sign_note(TEXT, "PeterNeumann", signer) == TEXT + "\n" + PETER_SIG  # Ed25519 is
    # deterministic (RFC 8032), so the same key and text give the published bytes


def test_go_doubly_signed_note() -> None:
    msg = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert note.open_note(msg, note.parse_verifier_key(PETER_KEY)) == TEXT
    assert note.open_note(msg.encode(), note.parse_verifier_key(ENOCH_KEY)) == TEXT
    # Duplicates of our line verify; a corrupt line by an unknown key is ignored.
    bad_enoch = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    both = TEXT + "\n" + PETER_SIG * 2 + ENOCH_SIG + bad_enoch
    assert note.open_note(both, note.parse_verifier_key(PETER_KEY)) == TEXT


def test_go_verifier_key_manglings_are_refused() -> None:
    bad = [PETER_KEY[i:j] for i in range(len(PETER_KEY)) for j in range(i + 1, len(PETER_KEY) + 1)]
    bad.remove(PETER_KEY)
    bad += [PETER_KEY[:i] + chr(ord(c) + 1) + PETER_KEY[i + 1 :] for i, c in enumerate(PETER_KEY)]
    bad += [
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",  # length
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # algorithm
        PETER_KEY.replace("c74f20a3", "C74F20A3"),  # we emit and accept lowercase hex only
    ]
    for text in bad:
        with pytest.raises(InputError, match=r"^--key: "):
            note.parse_verifier_key(text)


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (TEXT, "no blank line"),
        (TEXT + "\n", "does not end with a signature line"),
        (TEXT + "\n" + PETER_SIG[:-1], "does not end with a signature line"),
        ("\x01" + TEXT + "\n" + PETER_SIG, "control character"),
        (b"\xff" + (TEXT + "\n" + PETER_SIG).encode(), "not valid UTF-8"),
        (TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name")[:-1], "does not end with a"),
        (TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name"), "not canonical base64"),
        (TEXT + "\n" + PETER_SIG + "Unexpected line.\n", r"signature\[1\]: does not start"),
        (TEXT + "\n" + PETER_SIG * 101, "more than 100 signature lines"),
        (TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:], "does not verify"),
        (TEXT + "\n" + PETER_SIG.replace("x08g", "xxxx"), "no signature by PeterNeumann"),
        (TEXT + "\n" + PETER_SIG.replace("Peter", "Carmen"), "no signature by PeterNeumann"),
        (TEXT + "\n" + ENOCH_SIG, "no signature by PeterNeumann"),
    ],
)
def test_go_bad_notes(msg: str | bytes, match: str) -> None:
    with pytest.raises(VerificationError, match=match):
        note.open_note(msg, note.parse_verifier_key(PETER_KEY))


# --- our checkpoints ------------------------------------------------------------------------


def test_checkpoint_round_trip_with_generated_key() -> None:
    key = note.load_private_key_pem(note.generate_private_key_pem(), "ledger.key")
    vkey = note.verifier_key(ORIGIN, key.public_key())
    text = note.sign_checkpoint(ORIGIN, 42, ROOT, ORIGIN, key)
    body = f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}\n"
    assert text.startswith(body + "\n— " + ORIGIN + " ")
    checkpoint = note.open_checkpoint(text, note.parse_verifier_key(vkey + "\n"))
    assert checkpoint == note.Checkpoint(ORIGIN, 42, ROOT, (), body)
    assert note.open_checkpoint(text, note.parse_verifier_key(vkey), origin=ORIGIN) == checkpoint


def test_checkpoint_keeps_extension_lines() -> None:
    body = f"{ORIGIN}\n0\n{base64.b64encode(ROOT).decode()}\nTimestamp: 1\nother ext\n"
    checkpoint = note.open_checkpoint(note.sign_note(body, ORIGIN, KEY), VERIFIER)
    assert checkpoint.extensions == ("Timestamp: 1", "other ext")
    assert checkpoint.size == 0
    assert checkpoint.body_text == body


def test_checkpoint_origin_must_match() -> None:
    text = note.sign_checkpoint("another.log", 1, ROOT, ORIGIN, KEY)
    with pytest.raises(VerificationError, match=r"origin: is 'another\.log', not 'ledger\.example"):
        note.open_checkpoint(text, VERIFIER)
    assert note.open_checkpoint(text, VERIFIER, origin="another.log").origin == "another.log"


def test_sixteen_signatures_including_ours() -> None:
    body = note.checkpoint_body(ORIGIN, 7, ROOT)
    ours = note.sign_checkpoint(ORIGIN, 7, ROOT, ORIGIN, KEY).rsplit("\n\n", 1)[1]
    others = [other_signature_line(f"witness{i}.example", body, i) for i in range(15)]
    text = body + "\n" + "".join(others[:9]) + ours + "".join(others[9:])
    assert text.count("\n— ") == 16
    assert note.open_checkpoint(text, VERIFIER).size == 7
    # The same lines with one forged signature under our key id must fail, wherever it is.
    raw = bytearray(base64.b64decode(ours.split(" ")[2]))
    raw[-1] ^= 1
    forged = f"— {ORIGIN} {base64.b64encode(raw).decode()}\n"
    for at in (0, 8, 16):
        lines = [*others, ours]
        lines.insert(at, forged)
        with pytest.raises(VerificationError, match=f"signature by {ORIGIN} does not verify"):
            note.open_checkpoint(body + "\n" + "".join(lines), VERIFIER)


def signed(body: str) -> str:
    return note.sign_note(body, ORIGIN, KEY)


GOOD_BODY = note.checkpoint_body(ORIGIN, 5, ROOT)
GOOD = signed(GOOD_BODY)
B64_ROOT = base64.b64encode(ROOT).decode()
OUR_LINE = GOOD.rsplit("\n\n", 1)[1]
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# The same 32 bytes with a padding bit set: decodes leniently, but is not the canonical encoding.
NON_CANONICAL_ROOT = B64_ROOT[:-2] + _ALPHABET[_ALPHABET.index(B64_ROOT[-2]) | 1] + "="


def _flip_sig_byte(text: str, index: int) -> str:
    body, line = text.rsplit("\n\n", 1)
    head, encoded = line.rstrip("\n").rsplit(" ", 1)
    raw = bytearray(base64.b64decode(encoded))
    raw[index] ^= 0x40
    return f"{body}\n\n{head} {base64.b64encode(raw).decode()}\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (_flip_sig_byte(GOOD, 10), "does not verify"),
        (_flip_sig_byte(GOOD, 2), "no signature by"),  # a wrong key id is another key
        (GOOD.replace("\n5\n", "\n6\n"), "does not verify"),
        (GOOD.replace(ORIGIN + " ", "someone.else "), "no signature by"),
        (GOOD.replace("\n\n", "\n"), "no blank line"),
        (GOOD.replace("— ", "- "), "does not start with an em dash"),
        (GOOD.replace("— ", "—"), "does not start with an em dash"),
        (GOOD[:-3] + "!=\n", "not canonical base64"),
        (GOOD_BODY + "\n" + OUR_LINE + "— \n", "no valid key name"),
        (GOOD_BODY + "\n" + OUR_LINE + f"— {ORIGIN} AAAA\n", "not canonical base64 of a key id"),
        (GOOD_BODY + "\n" + OUR_LINE + f"— {ORIGIN} AAE=\n", "not canonical base64"),
        (signed(f"{ORIGIN}\nfive\n{B64_ROOT}\n"), "size: is not a decimal"),
        (signed(f"{ORIGIN}\n05\n{B64_ROOT}\n"), "size: is not a decimal"),
        (signed(f"{ORIGIN}\n+5\n{B64_ROOT}\n"), "size: is not a decimal"),
        (signed(f"{ORIGIN}\n-5\n{B64_ROOT}\n"), "size: is not a decimal"),
        (signed(f"{ORIGIN}\n٥\n{B64_ROOT}\n"), "size: is not a decimal"),  # noqa: RUF001
        (signed(f"{ORIGIN}\n{1 << 64}\n{B64_ROOT}\n"), "size: is not a decimal"),
        (signed(f"{ORIGIN}\n 5\n{B64_ROOT}\n"), "size: is not a decimal"),
        (signed(f"{ORIGIN}\n5\n{base64.b64encode(ROOT[:31]).decode()}\n"), "root: is not"),
        (signed(f"{ORIGIN}\n5\n{B64_ROOT.rstrip('=')}\n"), "root: is not"),
        (signed(f"{ORIGIN}\n5\n{NON_CANONICAL_ROOT}\n"), "root: is not"),
        (signed(f"{ORIGIN}\n5\n"), "needs an origin, a size and a root"),
        (signed(f"\n5\n{B64_ROOT}\n"), "origin: is empty"),
        (signed(f"{ORIGIN}\n5\n{B64_ROOT}\n\next\n"), "empty extension line"),
    ],
)
def test_forged_and_malformed_checkpoints(text: str, match: str) -> None:
    with pytest.raises(VerificationError, match=match):
        note.open_checkpoint(text, VERIFIER)


def test_largest_size_is_accepted() -> None:
    text = signed(f"{ORIGIN}\n{(1 << 64) - 1}\n{B64_ROOT}\n")
    assert note.open_checkpoint(text, VERIFIER).size == (1 << 64) - 1


@settings(max_examples=100, deadline=None)
@given(
    origin=st.text(st.characters(codec="utf-8", exclude_categories=["Z", "C"]), min_size=1),
    size=st.integers(min_value=0, max_value=(1 << 64) - 1),
    root=st.binary(min_size=32, max_size=32),
)
def test_checkpoint_round_trip_property(origin: str, size: int, root: bytes) -> None:
    text = note.sign_checkpoint(origin, size, root, ORIGIN, KEY)
    checkpoint = note.open_checkpoint(text, VERIFIER, origin=origin)
    assert (checkpoint.origin, checkpoint.size, checkpoint.root) == (origin, size, root)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_change_to_the_body_is_refused(data: st.DataObject) -> None:
    at = data.draw(st.integers(min_value=0, max_value=len(GOOD_BODY) - 1), label="at")
    new = data.draw(st.characters(codec="utf-8").filter(lambda c: c != GOOD_BODY[at]), label="c")
    with pytest.raises(VerificationError):
        note.open_checkpoint(GOOD_BODY[:at] + new + GOOD_BODY[at + 1 :] + "\n" + OUR_LINE, VERIFIER)


# --- keys and signing arguments -------------------------------------------------------------


def test_load_private_key_refuses_other_keys() -> None:
    with pytest.raises(InputError, match=r"^ledger\.key: is not an unencrypted PKCS#8 PEM"):
        note.load_private_key_pem("not a key", "ledger.key")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InputError, match="is not an Ed25519 private key"):
        note.load_private_key_pem(pem, "ledger.key")
    encrypted = KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(InputError, match="is not an unencrypted"):
        note.load_private_key_pem(encrypted, "ledger.key")


def test_generated_keys_differ_and_load() -> None:
    first, second = note.generate_private_key_pem(), note.generate_private_key_pem()
    assert first.startswith("-----BEGIN PRIVATE KEY-----\n")
    assert first != second
    assert isinstance(note.load_private_key_pem(first.encode(), "k"), Ed25519PrivateKey)


def test_parse_verifier_key_names_the_path() -> None:
    with pytest.raises(InputError, match=r"^ledger\.verifier: key id"):
        note.parse_verifier_key(PETER_KEY.replace("c74f20a3", "c74f20a4"), path="ledger.verifier")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: note.sign_note("no newline", ORIGIN, KEY), "must end in a newline"),
        (lambda: note.sign_note("a\x00b\n", ORIGIN, KEY), "no controls"),
        (lambda: note.sign_note("ok\n", "bad name", KEY), "name must be valid"),
        (lambda: note.sign_note("ok\n", "a+b", KEY), "name must be valid"),
        (lambda: note.checkpoint_body("two\nlines", 1, ROOT), "one-line origin"),
        (lambda: note.checkpoint_body("", 1, ROOT), "one-line origin"),
        (lambda: note.checkpoint_body(ORIGIN, -1, ROOT), "0 <= size < 2"),
        (lambda: note.checkpoint_body(ORIGIN, 1 << 64, ROOT), "0 <= size < 2"),
        (lambda: note.checkpoint_body(ORIGIN, 1, ROOT[:31]), "32-byte root"),
        (lambda: note.verifier_key("bad name", KEY.public_key()), "invalid key name"),
    ],
)
def test_signing_refuses_bad_arguments(call: object, match: str) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=match):
        call()
