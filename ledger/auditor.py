"""`gpucap log verify`: what an auditor or a witness runs on another machine, trusting only the
verifier key it was given.

It checks the served checkpoint's signature; with a state directory, it checks a consistency
proof from the newest checkpoint it accepted before and stores the new one beside the old ones
(every accepted checkpoint stays, named `<size>.checkpoint`); a smaller tree, or another root at
a size it already holds, is refused and kept as evidence (`conflict-<size>-<n>.checkpoint`).
`entries` downloads every entry and recomputes the root. VerificationError is the log's answer
being wrong (exit 1); UnavailableError is the ledger not answering (exit 3), or answering with
something that is not a signed note at all (another service's page claims nothing).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpucap.core.errors import InputError
from gpucap.ledger import merkle, note
from gpucap.ledger.errors import UnavailableError, VerificationError

_NAME = re.compile(r"^(\d+)\.checkpoint$")
PAGE = 1000

Fetch = Callable[[str, dict[str, int] | None], Any]  # path, params -> text or JSON


@dataclass(frozen=True)
class Outcome:
    size: int
    root: bytes
    previous_size: int | None
    entries_checked: int


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise VerificationError(where, "is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError(where, "is not valid base64") from None


def _hashes(answer: Any, where: str) -> list[bytes]:
    if not isinstance(answer, dict) or not isinstance(answer.get("hashes"), list):
        raise VerificationError(where, "the answer has no list of hashes")
    return [_b64(h, f"{where}.hashes[{i}]") for i, h in enumerate(answer["hashes"])]


def verify(fetch: Fetch, key: note.Verifier, state: Path | None, entries: bool) -> Outcome:
    text = fetch("/v1/log/checkpoint", None)
    if not isinstance(text, str):
        raise UnavailableError("/v1/log/checkpoint", "the answer is not a signed note (text/plain)")
    # A blank line, then a signature line ("— name ..."): without one it claims nothing to refute.
    if "\n\n\u2014 " not in text:
        raise UnavailableError("/v1/log/checkpoint", "the answer is not a signed note")
    checkpoint = note.open_checkpoint(text, key)
    previous = None
    if state is not None:
        previous = _previous(state, key)
        if previous is not None:
            _check_against(fetch, previous, checkpoint, text, state)
    checked = _entries(fetch, checkpoint) if entries else 0
    if state is not None:
        _store(state, f"{checkpoint.size}.checkpoint", text)
    return Outcome(
        checkpoint.size, checkpoint.root, None if previous is None else previous.size, checked
    )


def _previous(state: Path, key: note.Verifier) -> note.Checkpoint | None:
    try:
        state.mkdir(parents=True, exist_ok=True)
        sizes = sorted(int(m[1]) for p in state.iterdir() if (m := _NAME.match(p.name)))
        if not sizes:
            return None
        text = (state / f"{sizes[-1]}.checkpoint").read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError("--state", f"cannot use {state}: {exc.strerror or exc}") from None
    try:
        return note.open_checkpoint(text, key)
    except VerificationError as exc:
        raise VerificationError(
            "--state", f"the stored checkpoint {sizes[-1]} does not verify: {exc}"
        ) from None


def _check_against(
    fetch: Fetch, old: note.Checkpoint, new: note.Checkpoint, new_text: str, state: Path
) -> None:
    if new.size < old.size:
        _evidence(state, new.size, new_text)
        raise VerificationError(
            "checkpoint", f"the log shrank from {old.size} to {new.size} entries (rolled back)"
        )
    if new.size == old.size:
        if new.root != old.root:
            _evidence(state, new.size, new_text)
            raise VerificationError(
                "checkpoint", f"two different roots for size {new.size} (a forked log)"
            )
        return
    answer = fetch("/v1/log/proof/consistency", {"from": old.size, "to": new.size})
    proof = _hashes(answer, "consistency")
    try:
        merkle.verify_consistency(old.size, new.size, proof, old.root, new.root)
    except VerificationError as exc:
        _evidence(state, new.size, new_text)
        raise VerificationError(
            "consistency", f"tree {new.size} does not extend tree {old.size}: {exc}"
        ) from None


def _entries(fetch: Fetch, checkpoint: note.Checkpoint) -> int:
    frontier: list[merkle.Node] = []
    size = 0
    while size < checkpoint.size:
        answer = fetch("/v1/log/entries", {"start": size, "end": min(size + PAGE, checkpoint.size)})
        items = answer.get("entries") if isinstance(answer, dict) else None
        if not isinstance(items, list) or not items:
            raise VerificationError("entries", f"no entries served from index {size}")
        hashes: list[bytes] = []
        for item in items:
            where = f"entries[{size + len(hashes)}]"
            if not isinstance(item, dict) or item.get("index") != size + len(hashes):
                raise VerificationError(where, "missing or out of order")
            leaf = _b64(item.get("leaf"), f"{where}.leaf")
            leaf_hash = merkle.leaf_hash(leaf)
            if _b64(item.get("leaf_hash"), f"{where}.leaf_hash") != leaf_hash:
                raise VerificationError(where, "leaf_hash is not the hash of the leaf bytes")
            try:
                decoded = json.loads(leaf)
            except ValueError:
                raise VerificationError(where, "the leaf is not JSON") from None
            if item.get("entry") != decoded:
                raise VerificationError(where, "the decoded entry differs from the leaf bytes")
            hashes.append(leaf_hash)
        _nodes, frontier, size = merkle.append(frontier, size, hashes)
    if merkle.root_from_frontier(frontier) != checkpoint.root:
        raise VerificationError("entries", "the entries do not make the checkpoint's root")
    return size


def _evidence(state: Path, size: int, text: str) -> None:
    n = sum(1 for p in state.iterdir() if p.name.startswith(f"conflict-{size}-"))
    _store(state, f"conflict-{size}-{n}.checkpoint", text)


def _store(state: Path, name: str, text: str) -> None:
    """Write atomically (temporary file, fsync, rename, fsync of the directory); a file that
    exists already is never replaced."""
    target = state / name
    if target.exists():
        return
    tmp = state / f".{name}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fd = os.open(state, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise InputError("--state", f"cannot write {target}: {exc.strerror or exc}") from None
