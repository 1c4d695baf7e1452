"""The evidence bundle: export, offline verification, and every kind of tampering caught."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from gpucap.ledger import bundle, events, ingest, log, note
from gpucap.ledger.errors import VerificationError
from gpucap.ledger.known import parse_known_at
from gpucap.ledger.models import Report
from gpucap.ledger.service import Ledger
from gpucap.ledger.tokens import Principal
from tests.ledger.support import REGISTRY, Clock, gpucap, report

AUDITOR = Principal("x", "auditor", auditor="ext")
NIMBUS = Principal("b", "operator", operator="ops", entity="nimbus")
AS_OF = date(2025, 9, 30)


def rep(**kw: Any) -> Report:
    return Report.model_validate(report(**kw))


def _fleet(led: Ledger, clock: Clock) -> int:
    led.ingest(rep(node="n1", site="acme-ae-1", n=8))
    led.ingest(rep(node="n2", site="nimbus-ae-1", n=4))
    clock.moment += timedelta(days=1)
    led.ingest(rep(node="n1", site="acme-ae-1", seq=2, n=6))  # two devices vanish
    led.integrator.run_once()
    with led.store.read() as conn:
        return log.tree(conn).size


def key(led: Ledger) -> note.Verifier:
    return note.parse_verifier_key(led.signer.verifier_key, "key")


def rewrite(path: Path, out: Path, change: Callable[[dict[str, bytes]], None]) -> Path:
    """A copy of the bundle with files changed and the manifest's digests rewritten to match,
    as a tamperer would."""
    with zipfile.ZipFile(path) as zf:
        files = {i.filename: zf.read(i) for i in zf.infolist()}
    manifest = json.loads(files.pop("manifest.json"))
    change(files)
    manifest["files"] = {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        for name, data in files.items():
            zf.writestr(name, data)
    return out


@pytest.fixture
def exported(ledger: Ledger, clock: Clock, tmp_path: Path) -> Path:
    _fleet(ledger, clock)
    path = tmp_path / "evidence.zip"
    bundle.export(ledger, path, AUDITOR, None, AS_OF)
    return path


def test_a_bundle_verifies_offline(ledger: Ledger, exported: Path) -> None:
    outcome = bundle.verify(exported, key(ledger))
    assert outcome.devices == 12  # 6 at n1 present + 2 vanished, 4 at n2
    assert outcome.checks > 0
    assert not outcome.not_reproducible
    with zipfile.ZipFile(exported) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
    assert {"headroom.json", "devices.csv", "entries.jsonl", "checkpoint.txt"} <= names
    assert {"verifier-key.txt", "registry.json", "catalogue.yaml", "country-groups.yaml"} <= names
    assert "rulesets/us-bis-ai-diffusion-2025.yaml" in names
    assert manifest["exported_by"] == "cli"
    assert set(manifest["files"]) == names - {"manifest.json"}


def _edit_json(name: str, edit: Callable[[Any], None]) -> Callable[[dict[str, bytes]], None]:
    def change(files: dict[str, bytes]) -> None:
        doc = json.loads(files[name])
        edit(doc)
        files[name] = json.dumps(doc).encode()

    return change


def _first_check_used(doc: Any) -> None:
    doc["checks"][0]["used_tpp"] += 1


def _csv_row(files: dict[str, bytes]) -> None:
    lines = files["devices.csv"].decode().splitlines()
    lines[2] = lines[2].replace("acme-ae-1", "acme-us-1")
    files["devices.csv"] = ("\n".join(lines) + "\n").encode()


def _entry(files: dict[str, bytes]) -> None:
    lines = files["entries.jsonl"].decode().splitlines()
    item = json.loads(lines[1])
    item["leaf"] = item["leaf"].replace('"seq":1', '"seq":7')
    lines[1] = json.dumps(item)
    files["entries.jsonl"] = ("\n".join(lines) + "\n").encode()


def _proof(files: dict[str, bytes]) -> None:
    lines = files["entries.jsonl"].decode().splitlines()
    item = json.loads(lines[0])
    item["proof"][0] = "A" * 43 + "="
    lines[0] = json.dumps(item)
    files["entries.jsonl"] = ("\n".join(lines) + "\n").encode()


def _checkpoint(files: dict[str, bytes]) -> None:
    text = files["checkpoint.txt"].decode().split("\n")
    text[1] = str(int(text[1]) + 1)
    files["checkpoint.txt"] = "\n".join(text).encode()


def _rule_pack(files: dict[str, bytes]) -> None:
    name = "rulesets/us-bis-ai-diffusion-2025.yaml"
    files[name] = files[name].replace(b"0.5", b"0.6", 1)


def _rule_pack_and_provenance(files: dict[str, bytes]) -> None:
    _rule_pack(files)
    digest = hashlib.sha256(files["rulesets/us-bis-ai-diffusion-2025.yaml"]).hexdigest()
    doc = json.loads(files["headroom.json"])
    doc["provenance"]["rulesets"][0]["digest"] = digest
    files["headroom.json"] = json.dumps(doc).encode()


def _country_groups(files: dict[str, bytes]) -> None:
    """Cambodia kept in D:5 (and so in Tier 3) after it left."""
    raw = files["country-groups.yaml"]
    assert b"until: 2026-02-03" in raw
    files["country-groups.yaml"] = raw.replace(b"until: 2026-02-03", b"until: 2027-02-03", 1)


def _no_country_groups(files: dict[str, bytes]) -> None:
    del files["country-groups.yaml"]


def _explain(files: dict[str, bytes]) -> None:
    name = sorted(n for n in files if n.startswith("explain/"))[0]
    doc = json.loads(files[name])
    doc["contributions"].append(dict(doc["contributions"][0]) if doc["contributions"] else {})
    files[name] = json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (_csv_row, "devices.csv row 2"),
        (_edit_json("headroom.json", _first_check_used), "headroom.json check"),
        (_entry, "inclusion proof"),
        (_proof, "inclusion proof"),
        (_checkpoint, "signature"),
        (_rule_pack, "is not the rule pack headroom.json's provenance names"),
        (_rule_pack_and_provenance, "differs from gpucap's own us-bis-ai-diffusion-2025"),
        (_explain, "explain/"),
        (_country_groups, "country-groups.yaml: differs from gpucap"),
        (_no_country_groups, "country-groups.yaml: missing from the bundle"),
    ],
)
def test_tampering_is_caught_even_with_the_manifest_rewritten(
    ledger: Ledger, exported: Path, tmp_path: Path, change: Any, where: str
) -> None:
    forged = rewrite(exported, tmp_path / "forged.zip", change)
    with pytest.raises(VerificationError) as info:
        bundle.verify(forged, key(ledger))
    assert where in str(info.value)


def test_a_changed_file_without_a_rewritten_manifest_is_named(
    ledger: Ledger, exported: Path, tmp_path: Path
) -> None:
    with zipfile.ZipFile(exported) as zf:
        files = {i.filename: zf.read(i) for i in zf.infolist()}
    files["devices.csv"] += b"x\n"
    forged = tmp_path / "f.zip"
    with zipfile.ZipFile(forged, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    with pytest.raises(VerificationError, match=r"devices\.csv: its SHA-256 differs"):
        bundle.verify(forged, key(ledger))


def test_the_auditors_key_decides_not_the_bundled_one(ledger: Ledger, exported: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = note.verifier_key(ledger.signer.origin, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(VerificationError):
        bundle.verify(exported, note.parse_verifier_key(other, "key"))


def test_a_bundle_at_known_at_verifies_identically_after_later_changes(
    ledger: Ledger, clock: Clock, registry_file: Path, tmp_path: Path
) -> None:
    size = _fleet(ledger, clock)
    known = parse_known_at(f"log_size={size}")
    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    bundle.export(ledger, first, AUDITOR, None, AS_OF, known)
    clock.moment += timedelta(days=1)
    ledger.ingest(rep(node="n3", site="acme-us-1", n=8))
    registry_file.write_text(REGISTRY.replace("count: 1000", "count: 10"), encoding="utf-8")
    ledger.load_registry_file(registry_file)
    ingest.decommission(ledger.store, "n2", clock(), "operator:cli")
    ledger.integrator.run_once()
    bundle.export(ledger, second, AUDITOR, None, AS_OF, known)
    for path in (first, second):
        assert bundle.verify(path, key(ledger)).devices == 12
    with zipfile.ZipFile(first) as a, zipfile.ZipFile(second) as b:
        for name in ("devices.csv", "registry.json", "entries.jsonl"):
            if name == "entries.jsonl":  # the proofs are to a later checkpoint
                left = [json.loads(x)["leaf"] for x in a.read(name).splitlines()]
                right = [json.loads(x)["leaf"] for x in b.read(name).splitlines()]
                assert left == right
                continue
            assert a.read(name) == b.read(name), name
        ha, hb = json.loads(a.read("headroom.json")), json.loads(b.read("headroom.json"))
        assert ha["checks"] == hb["checks"]


def test_an_entity_bundle_holds_nothing_about_other_entities(
    ledger: Ledger, clock: Clock, tmp_path: Path
) -> None:
    _fleet(ledger, clock)
    path = tmp_path / "nimbus.zip"
    manifest = bundle.export(ledger, path, AUDITOR, "entity:nimbus", AS_OF)
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if name.startswith(("rulesets/", "catalogue", "eccn")):
                continue
            assert b"acme" not in zf.read(name), name
    assert manifest["entity"] == "nimbus"
    outcome = bundle.verify(path, key(ledger))
    assert outcome.devices == 4
    assert outcome.notes  # says the registry is reduced


def test_checks_beyond_the_entity_are_listed_not_failed(
    ledger: Ledger, clock: Clock, tmp_path: Path
) -> None:
    _fleet(ledger, clock)
    path = tmp_path / "acme.zip"
    manifest = bundle.export(ledger, path, NIMBUS, None, AS_OF)
    listed = {(c["rule"], c["scope"]) for c in manifest["not_reproducible"]}
    assert ("country_allocation", "country:AE") in listed
    outcome = bundle.verify(path, key(ledger))
    assert ("country_allocation", "country:AE") in outcome.not_reproducible


def test_what_is_not_a_bundle_says_so(tmp_path: Path, ledger: Ledger) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(bundle.NotABundleError):
        bundle.verify(junk, key(ledger))
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("x.txt", "x")
    with pytest.raises(bundle.NotABundleError, match=r"no manifest\.json"):
        bundle.verify(empty, key(ledger))


def test_audit_verify_exit_codes(ledger: Ledger, exported: Path, tmp_path: Path) -> None:
    verifier = ledger.signer.verifier_key
    ok = gpucap("audit", "verify", str(exported), "--key", verifier)
    assert ok.returncode == 0, ok.stderr
    assert "re-derived" in ok.stdout
    forged = rewrite(exported, tmp_path / "f.zip", _csv_row)
    bad = gpucap("audit", "verify", str(forged), "--key", verifier)
    assert bad.returncode == 1
    assert "devices.csv row 2" in bad.stderr
    (tmp_path / "junk.zip").write_bytes(b"junk")
    junk = gpucap("audit", "verify", str(tmp_path / "junk.zip"), "--key", verifier)
    assert junk.returncode == 2


# -- events -----------------------------------------------------------------------------------
def test_events_are_paginated_filtered_and_scoped(ledger: Ledger, clock: Clock) -> None:
    _fleet(ledger, clock)
    ledger.integrator.run_once()
    everything = ledger.events(AUDITOR, events.parse_query({"limit": "2"}))
    assert [e["index"] for e in everything["entries"]] == [0, 1]
    rest = ledger.events(
        AUDITOR, events.parse_query({"cursor": str(everything["next_cursor"]), "limit": "1000"})
    )
    indexes = [e["index"] for e in everything["entries"] + rest["entries"]]
    assert indexes == list(range(rest["log_size"]))
    assert rest["next_cursor"] is None
    reports = ledger.events(AUDITOR, events.parse_query({"kind": "report", "node": "n1"}))
    assert [e["body"]["seq"] for e in reports["entries"]] == [1, 2]
    theirs = ledger.events(NIMBUS, events.parse_query({}))["entries"]
    assert {e["kind"] for e in theirs} == {"registry", "report"}
    assert all(e["body"].get("node_id") in (None, "n2") for e in theirs)
    assert b"acme" not in json.dumps(theirs).encode()
    later = (clock.moment - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    recent = ledger.events(AUDITOR, events.parse_query({"since": later}))["entries"]
    assert [e["body"]["seq"] for e in recent] == [2]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"kind": "nope"}, "kind"),
        ({"limit": "0"}, "limit"),
        ({"limit": "5000"}, "limit"),
        ({"cursor": "-1"}, "cursor"),
        ({"since": "2025-09-02T00:00:00Z", "until": "2025-09-01T00:00:00Z"}, "since"),
        ({"since": "yesterday"}, "since"),
        ({"node": "a b"}, "node"),
    ],
)
def test_bad_event_queries_name_the_parameter(params: dict[str, str], field: str) -> None:
    from gpucap.ledger.errors import RejectedError

    with pytest.raises(RejectedError) as info:
        events.parse_query(params)
    assert info.value.path == field


def test_a_refused_export_leaves_no_file(ledger: Ledger, tmp_path: Path) -> None:
    from gpucap.ledger.errors import RejectedError

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RejectedError):
        bundle.export(ledger, out / "e.zip", AUDITOR, "country:ZZ", AS_OF)
    assert list(out.iterdir()) == []
