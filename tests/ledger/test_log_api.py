"""`/v1/log/...` on a real server, who may read what, and `gpucap log verify` as an auditor runs
it from another machine: pinned key, state directory, entries, and a log that lies."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpucap.ledger import auditor, merkle, note, tokens
from gpucap.ledger.errors import VerificationError
from gpucap.ledger.settings import Settings, utc_now
from gpucap.ledger.store import Store
from tests.ledger.support import REGISTRY, device, gpucap, ledger_server, report

pytestmark = pytest.mark.slow


@dataclass
class Served:
    url: str
    db_url: str
    tokens: dict[str, str]

    def get(self, path: str, who: str, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return httpx.get(f"{self.url}{path}", headers=headers, params=params, timeout=30)

    def send(self, seq: int, n: int) -> None:
        body = report(seq=seq, devices=[device(i) for i in range(n)])
        headers = {"Authorization": f"Bearer {self.tokens['n1']}"}
        r = httpx.post(f"{self.url}/v1/reports", json=body, headers=headers, timeout=30)
        assert r.json() == {"status": "accepted", "seq": seq}

    def checkpoint(self) -> note.Checkpoint:
        text = self.get("/v1/log/checkpoint", "auditor").text
        return note.parse_checkpoint(text.split("\n\n")[0] + "\n")

    def wait_for(self, size: int) -> note.Checkpoint:
        import time

        deadline = time.monotonic() + 2.0  # the promise: signed within 2 seconds
        while (cp := self.checkpoint()).size < size:
            assert time.monotonic() < deadline, f"entry {size - 1} not signed within 2 s"
            time.sleep(0.05)
        return cp


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[Served]:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    store = Store.open(Settings(db_url=db_url))
    subjects: dict[str, tuple[str, dict[str, str]]] = {
        "n1": ("node", {"node_id": "n1", "site_id": "acme-ae-1"}),
        "admin": ("operator", {"operator": "root"}),
        "acme": ("operator", {"operator": "ops", "entity": "acme"}),
        "auditor": ("auditor", {"auditor": "kpmg"}),
    }
    toks = {}
    try:
        for name, (kind, subject) in subjects.items():
            toks[name] = tokens.issue(store, kind, utc_now(), None, **subject)[1]  # type: ignore[arg-type]
    finally:
        store.close()
    with ledger_server(db_url, registry) as url:
        yield Served(url, db_url, toks)


def test_checkpoint_key_entries_and_proofs(served: Served) -> None:
    for seq in range(1, 6):
        served.send(seq, 8 - seq % 2)  # every report changes the inventory
    cp = served.wait_for(4 + 1 + 5)  # 4 token issues, the registry, 5 reports
    key_text = served.get("/v1/log/key", "auditor")
    assert key_text.headers["content-type"] == "text/plain; charset=utf-8"
    verifier = note.parse_verifier_key(key_text.text)
    assert key_text.text == gpucap("ledger", "log-key", "--db", served.db_url).stdout
    signed = note.open_checkpoint(served.get("/v1/log/checkpoint", "auditor").text, verifier)
    assert (signed.size, signed.root) == (cp.size, cp.root)
    got = served.get("/v1/log/entries", "auditor", start=0, end=cp.size).json()["entries"]
    assert [e["index"] for e in got] == list(range(cp.size))
    hashes = []
    for e in got:
        leaf = base64.b64decode(e["leaf"])
        assert base64.b64decode(e["leaf_hash"]) == merkle.leaf_hash(leaf)
        assert e["entry"] == json.loads(leaf)
        assert {"kind", "recorded_at", "actor", "body"} <= set(e["entry"])
        hashes.append(merkle.leaf_hash(leaf))
    assert merkle.root(hashes) == cp.root
    for i in range(cp.size):
        proof = served.get("/v1/log/proof/inclusion", "acme", index=i, size=cp.size).json()
        assert proof["index"] == i
        assert proof["size"] == cp.size
        path = [base64.b64decode(h) for h in proof["hashes"]]
        merkle.verify_inclusion(i, cp.size, hashes[i], path, cp.root)
    first = merkle.root(hashes[:3])
    proof = served.get("/v1/log/proof/consistency", "admin", **{"from": 3, "to": cp.size}).json()
    assert (proof["from"], proof["to"]) == (3, cp.size)
    path = [base64.b64decode(h) for h in proof["hashes"]]
    merkle.verify_consistency(3, cp.size, path, first, cp.root)


def test_who_may_read_the_log(served: Served) -> None:
    size = served.wait_for(1).size
    for who in ("admin", "acme", "auditor"):
        assert served.get("/v1/log/checkpoint", who).status_code == 200
        assert served.get("/v1/log/key", who).status_code == 200
        assert served.get("/v1/log/proof/inclusion", who, index=0, size=size).status_code == 200
    assert served.get("/v1/log/entries", "admin", start=0, end=1).status_code == 200
    assert served.get("/v1/log/entries", "auditor", start=0, end=1).status_code == 200
    scoped = served.get("/v1/log/entries", "acme", start=0, end=1)
    assert scoped.status_code == 403
    assert scoped.json()["reason"] == "out_of_scope"
    for path in ("/v1/log/checkpoint", "/v1/log/key", "/v1/log/entries"):
        assert served.get(path, "n1", start=0, end=1).status_code == 403
        assert httpx.get(f"{served.url}{path}", timeout=30).status_code == 401
    assert served.get("/v1/headroom", "auditor").status_code == 200  # reads every answer
    refused = httpx.post(
        f"{served.url}/v1/reports",
        json=report(seq=1),
        headers={"Authorization": f"Bearer {served.tokens['auditor']}"},
        timeout=30,
    )
    assert refused.status_code == 403  # writes nothing


BAD_PARAMS = [
    ("/v1/log/proof/inclusion", {"index": 0, "size": 10**6}, "size"),
    ("/v1/log/proof/inclusion", {"index": 5, "size": 5}, "index"),
    ("/v1/log/proof/inclusion", {"index": -1, "size": 1}, "index"),
    ("/v1/log/proof/inclusion", {"size": 1}, "index"),
    ("/v1/log/proof/consistency", {"from": 2, "to": 10**6}, "to"),
    ("/v1/log/proof/consistency", {"from": 3, "to": 2}, "from"),
    ("/v1/log/proof/consistency", {"from": "x", "to": 2}, "from"),
    ("/v1/log/proof/inclusion", {"index": "\u00b2", "size": 1}, "index"),  # not ASCII digits
    ("/v1/log/proof/inclusion", {"index": 0, "size": "\u0661"}, "size"),
    ("/v1/log/entries", {"start": 10**6, "end": 10**6 + 1}, "start"),
    ("/v1/log/entries", {"start": 2, "end": 2}, "end"),
]


def test_bad_log_parameters_are_422_naming_them(served: Served) -> None:
    served.wait_for(5)
    for path, params, name in BAD_PARAMS:
        r = served.get(path, "auditor", **params)
        assert r.status_code == 422, (path, params, r.text)
        assert r.json()["detail"][0]["path"] == name, (path, params, r.text)
    for first, second in ((0, 0), (0, 3), (3, 3)):  # RFC 9162: no hashes needed
        proof = served.get("/v1/log/proof/consistency", "auditor", **{"from": first, "to": second})
        assert proof.status_code == 200, proof.text
        assert proof.json() == {"from": first, "to": second, "hashes": []}
    page = served.get("/v1/log/entries", "auditor", start=0, end=10**9).json()["entries"]
    assert [e["index"] for e in page] == list(range(served.checkpoint().size))  # clamped


def test_log_verify_with_a_state_directory_and_entries(served: Served, tmp_path: Path) -> None:
    key = served.get("/v1/log/key", "auditor").text.strip()
    env = {"GPUCAP_TOKEN": served.tokens["auditor"]}
    state = tmp_path / "witness"
    served.wait_for(5)
    args = ("log", "verify", "--ledger", served.url, "--key", key, "--state", str(state))
    first = gpucap(*args, env=env)
    assert first.returncode == 0, first.stderr
    assert "signed by" in first.stdout
    for seq in range(1, 4):
        served.send(seq, 8 - seq % 2)
    served.wait_for(8)
    second = gpucap(*args, "--entries", env=env)
    assert second.returncode == 0, second.stderr
    assert "extends 5" in second.stdout
    assert "ok: 8 entries make the checkpoint's root" in second.stdout
    assert sorted(p.name for p in state.iterdir()) == ["5.checkpoint", "8.checkpoint"]
    wrong_key = note.verifier_key(key.split("+")[0], _other_key().public_key())
    bad = gpucap("log", "verify", "--ledger", served.url, "--key", wrong_key, env=env)
    assert bad.returncode == 1
    assert "log inconsistent" in bad.stderr
    assert "no signature by" in bad.stderr
    gone = gpucap("log", "verify", "--ledger", "http://127.0.0.1:9", "--key", key, env=env)
    assert gone.returncode == 3
    malformed = gpucap("log", "verify", "--ledger", served.url, "--key", "nope", env=env)
    assert malformed.returncode == 2
    assert "--key" in malformed.stderr


def _other_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


class LyingLog:
    """A log server under test control: honest trees, then whatever the test makes it say."""

    def __init__(self, leaves: int) -> None:
        self.key = _other_key()
        self.origin = "example.org/log"
        self.leaves = [json.dumps({"n": i}).encode() for i in range(leaves)]
        self.size = leaves
        self.proof_override: list[str] | None = None
        self.entry_override: dict[int, dict[str, Any]] = {}

    @property
    def verifier(self) -> note.Verifier:
        return note.parse_verifier_key(note.verifier_key(self.origin, self.key.public_key()))

    def root(self, size: int) -> bytes:
        return merkle.root([merkle.leaf_hash(x) for x in self.leaves[:size]])

    def fetch(self, path: str, params: dict[str, int] | None) -> Any:
        hashes = [merkle.leaf_hash(x) for x in self.leaves]
        nodes, _f, _s = merkle.append([], 0, hashes[: self.size])
        get = {(n.level, n.index): n.hash for n in nodes}
        if path == "/v1/log/checkpoint":
            root = self.root(self.size)
            return note.sign_checkpoint(self.origin, self.size, root, self.origin, self.key)
        assert params is not None
        if path == "/v1/log/proof/consistency":
            proof = merkle.consistency_proof(params["from"], params["to"], get)
            b64 = [base64.b64encode(h).decode() for h in proof]
            return {"hashes": self.proof_override if self.proof_override is not None else b64}
        if path == "/v1/log/entries":
            out = []
            for i in range(params["start"], params["end"]):
                item = {
                    "index": i,
                    "leaf": base64.b64encode(self.leaves[i]).decode(),
                    "leaf_hash": base64.b64encode(hashes[i]).decode(),
                    "entry": json.loads(self.leaves[i]),
                }
                item.update(self.entry_override.get(i, {}))
                out.append(item)
            return {"entries": out}
        raise AssertionError(path)


def test_the_auditor_refuses_a_log_that_lies(tmp_path: Path) -> None:
    # An honest start, then a rollback, a fork, a forged proof and forged entries.
    server = LyingLog(20)
    server.size = 7
    assert auditor.verify(server.fetch, server.verifier, tmp_path, False).size == 7
    server.size = 20
    assert auditor.verify(server.fetch, server.verifier, tmp_path, False).previous_size == 7
    server.size = 12
    with pytest.raises(VerificationError, match="shrank from 20 to 12"):
        auditor.verify(server.fetch, server.verifier, tmp_path, False)
    server.size = 20
    server.leaves[3] = b'{"n": "rewritten"}'
    with pytest.raises(VerificationError, match="two different roots for size 20"):
        auditor.verify(server.fetch, server.verifier, tmp_path, False)
    server.leaves.append(b'{"n": 20}')
    server.size = 21
    with pytest.raises(VerificationError, match="does not extend tree 20"):
        auditor.verify(server.fetch, server.verifier, tmp_path, False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "20.checkpoint",
        "7.checkpoint",
        "conflict-12-0.checkpoint",
        "conflict-20-0.checkpoint",
        "conflict-21-0.checkpoint",
    ]  # the accepted ones stay; each refused checkpoint is kept as evidence


def test_the_auditor_refuses_forged_proofs_and_entries(tmp_path: Path) -> None:
    server = LyingLog(9)
    server.size = 4
    auditor.verify(server.fetch, server.verifier, tmp_path, False)
    server.size = 9
    for forged in ([], ["AAAA"], ["not base64!"], [base64.b64encode(b"x" * 32).decode()] * 3):
        server.proof_override = forged
        with pytest.raises(VerificationError):
            auditor.verify(server.fetch, server.verifier, tmp_path, False)
    server.proof_override = None
    assert auditor.verify(server.fetch, server.verifier, None, True).entries_checked == 9
    other = b'{"n": "other"}'
    leaf_hash = base64.b64encode(merkle.leaf_hash(other)).decode()
    for override, reason in (
        ({"leaf_hash": leaf_hash}, "leaf_hash is not the hash of the leaf bytes"),
        ({"index": 5}, "missing or out of order"),
        ({"entry": {"n": 99}}, "decoded entry differs from the leaf bytes"),
        (
            {
                "leaf": base64.b64encode(other).decode(),
                "leaf_hash": leaf_hash,
                "entry": {"n": "other"},
            },
            "do not make the checkpoint's root",
        ),
    ):
        server.entry_override = {4: override}
        with pytest.raises(VerificationError, match=reason):
            auditor.verify(server.fetch, server.verifier, None, True)
