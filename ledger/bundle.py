"""The evidence bundle: what a ledger hands an auditor, and the offline check of it.

`export` writes one zip: `manifest.json` (what, for which scope and dates, by whom, and the
SHA-256 of every other file), `headroom.json` (the answer with provenance), `explain/` (one file
per check), `devices.csv`, `entries.jsonl` (each entry the numbers depend on, with its inclusion
proof to the bundled checkpoint), `checkpoint.txt`, `verifier-key.txt`, the file of every rule
pack the answer evaluated, the catalogue files, the country groups, and `registry.json`.

`verify` trusts only the verifier key the auditor supplies and its own gpucap: the checkpoint's
signature, each entry's inclusion proof, each rule pack and the catalogue files against gpucap's own
copies of the same version, and then the numbers, re-derived by folding the bundled entries
(`record.py`) and evaluating them with the bundled packs: headroom, every explain file and every
device row must come out equal. Rewriting the manifest's digests therefore hides nothing: every
file is checked against something the tamperer cannot sign.

An entity-scoped bundle holds nothing about other entities: its registry is reduced to the
entity (the signed registry entry is represented by its leaf hash and proof only), its entries
are those of the entity's nodes, and checks whose inputs reach beyond the entity (a country's
allocation) are listed as not reproducible within the scope, with their values.

Export and verify stay in one module, past 400 lines, because they are one format read and
written: the file names, the entries' selection and the comparisons must change together.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import json
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gpucap
from gpucap.core.catalogue import Catalogue, parse_catalogue
from gpucap.core.classify import parse_thresholds
from gpucap.core.data import load_yaml_text
from gpucap.core.errors import GpucapError, InputError
from gpucap.core.groups import CountryGroups, parse_groups
from gpucap.core.ruleset import RulePack, country_codes, load_ruleset_file, parse_ruleset
from gpucap.ledger import log, merkle, note
from gpucap.ledger.errors import VerificationError
from gpucap.ledger.evaluations import Basis, fresh_view
from gpucap.ledger.explainer import explain_answer, pack_of
from gpucap.ledger.known import KnownAt, catalogue_paths, groups_path, ruleset_path
from gpucap.ledger.record import Record, RegistryState
from gpucap.ledger.views import parse_request_scope, require_visible

if TYPE_CHECKING:
    from gpucap.ledger.service import Ledger
    from gpucap.ledger.tokens import Principal

FORMAT = "gpucap.evidence/v1"
DEVICE_COLUMNS = (
    "uuid",
    "serial",
    "board_part_number",
    "model",
    "site",
    "country",
    "entity",
    "first_seen",
    "last_seen",
    "removed",
    "log_index",
)
_OWNED = ("entity", "consignee")


def owned_by(scope: str, entity: str) -> bool:
    """Whether a check's inputs are all the entity's own: its scope names only that entity."""
    parts = dict(p.partition(":")[::2] for p in scope.split("/"))
    owners = [parts[k] for k in _OWNED if k in parts]
    return bool(owners) and all(o == entity for o in owners)


def device_rows(record: Record, sites: Iterable[Any]) -> list[dict[str, Any]]:
    """devices.csv's rows for the given registry sites (by node, then uuid)."""
    by_id = {s.id: s for s in sites}
    rows = []
    for node, row in record.devices(by_id):
        site = by_id[row.site_id]
        serial, part = node.labels.get(row.facts.uuid, (None, None))
        rows.append(
            {
                "uuid": row.facts.uuid,
                "serial": serial or "",
                "board_part_number": part or "",
                "model": row.facts.model or "",
                "site": site.id,
                "country": site.country,
                "entity": site.entity,
                "first_seen": row.first_seen,
                "last_seen": node.last_seen,
                "removed": row.gone_on or "",
                "log_index": str(node.introduced[row.facts.uuid]),
            }
        )
    return rows


def devices_csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, DEVICE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def explain_name(n: int, rule: str, scope: str) -> str:
    safe = scope.replace("/", "_").replace(":", "-")
    return f"explain/{n:04d}-{rule}-{safe}.json"


def dumps(value: Any) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode("utf-8")


def write_zip(path: Path, files: dict[str, bytes], manifest: dict[str, Any], entries: Path) -> None:
    """The bundle, written to a temporary name and renamed: never a half-written file.
    `entries` is entries.jsonl, written beforehand to a file (it is most of a bundle)."""
    digests = {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
    h = hashlib.sha256()
    with entries.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            h.update(chunk)
    digests[_STREAMED] = h.hexdigest()
    manifest = {**manifest, "files": dict(sorted(digests.items()))}
    tmp = path.with_name(path.name + ".partial")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", dumps(manifest))
            for name in sorted(files):
                zf.writestr(name, files[name])
            zf.write(entries, _STREAMED)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


# -- verify ---------------------------------------------------------------------------------
class NotABundleError(InputError):
    """The file is not an evidence bundle at all (`audit verify` exit 2)."""


@dataclass
class Outcome:
    entries: int
    checks: int
    devices: int
    not_reproducible: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _fail(where: str, reason: str) -> VerificationError:
    return VerificationError(where, reason)


_STREAMED = "entries.jsonl"  # read as a stream, never whole: it is most of a bundle


@contextmanager
def opened(path: Path) -> Iterator[tuple[dict[str, Any], dict[str, bytes], zipfile.ZipFile]]:
    """(manifest, every other file but the entries, the open zip) of a bundle."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise NotABundleError(str(path), f"not a zip file: {exc}") from None
    with zf:
        try:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
            files = {n: zf.read(n) for n in names if n != _STREAMED}
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            raise NotABundleError(str(path), f"not a readable zip file: {exc}") from None
        raw = files.pop("manifest.json", None)
        if raw is None:
            raise NotABundleError(str(path), "no manifest.json: not an evidence bundle")
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            raise NotABundleError("manifest.json", f"not JSON: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise NotABundleError("manifest.json", f"not a {FORMAT} manifest")
        if _STREAMED in names:
            files[_STREAMED] = b""  # a placeholder: its digest is taken from the stream
        yield manifest, files, zf


def _digest(zf: zipfile.ZipFile, name: str, files: dict[str, bytes]) -> str:
    if name != _STREAMED:
        return hashlib.sha256(files[name]).hexdigest()
    h = hashlib.sha256()
    with zf.open(name) as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json(files: dict[str, bytes], name: str) -> Any:
    try:
        return json.loads(files[name])
    except KeyError:
        raise _fail(name, "missing from the bundle") from None
    except ValueError as exc:
        raise _fail(name, f"not JSON: {exc}") from None


def _b64(text: Any, where: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise _fail(where, "not valid base64") from None


def verify(path: Path, key: note.Verifier) -> Outcome:
    """Check a bundle; VerificationError names the first difference (a file, an entry, a
    check), NotABundleError a file that is not one."""
    with opened(path) as (manifest, files, zf):
        digests = manifest.get("files")
        if not isinstance(digests, dict):
            raise _fail("manifest.json", "has no files table")
        for name in sorted(set(files) | set(digests)):
            if name not in digests:
                raise _fail(name, "in the bundle but not in the manifest")
            if name not in files:
                raise _fail(name, "in the manifest but missing from the bundle")
            if _digest(zf, name, files) != digests[name]:
                raise _fail(name, "its SHA-256 differs from the manifest's")
        same_gpucap = manifest.get("gpucap_version") == gpucap.__version__
        try:
            checkpoint = note.open_checkpoint(files.get("checkpoint.txt", b""), key)
            packs, notes = _packs(files, manifest, _groups(files, same_gpucap))
            catalogue = _catalogue(files, same_gpucap)
            with zf.open(_STREAMED) as stream:
                lines = io.TextIOWrapper(stream, encoding="utf-8")
                outcome = _replay(manifest, files, _entries(lines, checkpoint), packs, catalogue)
        except VerificationError:
            raise
        except GpucapError as exc:  # a file that does not parse, an entry that does not fold
            raise _fail(exc.path, exc.reason) from None
        except KeyError as exc:
            raise _fail(str(exc.args[0]) if exc.args else "bundle", "missing") from None
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            raise _fail("bundle", f"malformed: {exc!r}") from None
    outcome.notes[:0] = notes
    return outcome


def _replay(
    manifest: dict[str, Any],
    files: dict[str, bytes],
    entries: Iterator[tuple[int, str]],
    packs: dict[str, RulePack],
    catalogue: Catalogue,
) -> Outcome:
    """Fold the entries, evaluate them with the bundled packs and compare every answer."""
    entity = manifest.get("entity")
    registry = _json(files, "registry.json")
    record = Record(catalogue)
    if entity is not None:
        record.registry = RegistryState(
            registry["doc"], registry["origin"], "", int(manifest["registry_log_index"]), ""
        )
    folded = 0
    for at, leaf in entries:
        record.apply(at, leaf, gaps=True)
        folded += 1
    state = record.registry
    if state is None:
        raise _fail("entries.jsonl", "holds no registry entry")
    if entity is None and log.canonical(state.doc) != log.canonical(registry.get("doc")):
        raise _fail("registry.json", "differs from the registry entry in the log")
    fleet = record.fleet()
    for pack_id in fleet.packs:  # every pack the registry names is evaluated, so bundled
        if pack_id not in packs:
            raise _fail("rulesets", f"the registry's rule pack {pack_id} is not bundled")
    as_of = date.fromisoformat(str(manifest["as_of"]))
    view = fresh_view(fleet, [packs[p] for p in fleet.packs], as_of, Basis("", 0, 0, None))
    skipped = {(c["rule"], c["scope"]) for c in manifest.get("not_reproducible", [])}
    headroom = _json(files, "headroom.json")
    headroom.pop("provenance", None)
    requested = manifest.get("requested")
    want = view.document.answer(entity, None if requested is None else tuple(requested))
    _compare_headroom(headroom, want, skipped)
    explained = 0
    for name in sorted(n for n in files if n.startswith("explain/")):
        doc = _json(files, name)
        doc.pop("provenance", None)
        key = (doc.get("rule"), doc.get("scope"))
        if key in skipped:
            continue
        rule, ruleset = str(key[0]), doc.get("ruleset")
        k = pack_of(view.packs, rule, None if ruleset is None else str(ruleset))
        pack, index = view.packs[k], view.indexes[k]
        made = explain_answer(record, fleet, pack, index, as_of, rule, str(key[1]), entity)
        made = {"as_of": as_of.isoformat(), **made}
        _compare(name, doc, made)
        explained += 1
    sites = [s for s in fleet.sites if s.id in set(manifest.get("sites", []))]
    rows = device_rows(record, sites)
    _compare_csv(files.get("devices.csv", b""), devices_csv(rows))
    notes = []
    if entity is not None:
        notes.append(
            f"registry.json is the registry reduced to entity {entity}: its signed entry is "
            "represented by its leaf hash and inclusion proof, not its text"
        )
    return Outcome(folded, explained, len(rows), sorted(skipped), notes)


def _compare(where: str, have: Any, want: Any, path: str = "") -> None:
    """VerificationError naming the first field where two JSON values differ."""
    if isinstance(have, dict) and isinstance(want, dict):
        for k in sorted(set(have) | set(want), key=str):
            if k not in have or k not in want:
                raise _fail(where, f"{path}{k}: present on one side only")
            _compare(where, have[k], want[k], f"{path}{k}.")
        return
    if isinstance(have, list) and isinstance(want, list):
        if len(have) != len(want):
            raise _fail(
                where, f"{path.rstrip('.')}: {len(have)} items, the replay makes {len(want)}"
            )
        for i, (a, b) in enumerate(zip(have, want, strict=True)):
            _compare(where, a, b, f"{path}[{i}].")
        return
    if have != want:
        raise _fail(where, f"{path.rstrip('.')} is {have!r}, the replay makes {want!r}")


def _compare_headroom(have: Any, want: dict[str, Any], skipped: set[tuple[str, str]]) -> None:
    if not isinstance(have, dict):
        raise _fail("headroom.json", "not an answer")
    if skipped:  # the verdict spans checks the scope cannot reproduce
        have, want = dict(have), dict(want)
        have.pop("verdict", None)
        want.pop("verdict", None)
        have["checks"] = [
            c for c in have.get("checks", []) if (c.get("rule"), c.get("scope")) not in skipped
        ]
        want["checks"] = [c for c in want["checks"] if (c["rule"], c["scope"]) not in skipped]
    checks = {(c.get("rule"), c.get("scope")): c for c in have.get("checks", [])}
    for c in want["checks"]:
        found = checks.get((c["rule"], c["scope"]))
        if found is None:
            raise _fail("headroom.json", f"check {c['rule']} {c['scope']} is missing")
        _compare(f"headroom.json check {c['rule']} {c['scope']}", found, c)
    _compare("headroom.json", have, want)


def _key(check: Any) -> tuple[Any, Any]:
    return (check.get("rule"), check.get("scope")) if isinstance(check, dict) else (None, None)


def _compare_csv(have: bytes, want: bytes) -> None:
    a, b = have.decode("utf-8").splitlines(), want.decode("utf-8").splitlines()
    for n, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            raise _fail(f"devices.csv row {n}", f"is {x!r}, the replay makes {y!r}")
    if len(a) != len(b):
        raise _fail("devices.csv", f"{len(a) - 1} rows, the replay makes {len(b) - 1}")


def _entries(lines: Iterable[str], checkpoint: note.Checkpoint) -> Iterator[tuple[int, str]]:
    """Every bundled entry with its text, checked for inclusion in the checkpoint's tree, in
    index order (entries bundled as a hash only are checked and not yielded)."""
    last = -1
    for n, line in enumerate(lines):
        where = f"entries.jsonl line {n + 1}"
        try:
            item = json.loads(line)
            index, leaf, proof = int(item["index"]), item.get("leaf"), item["proof"]
        except (ValueError, KeyError, TypeError):
            raise _fail(where, "not an entry with index, leaf and proof") from None
        hashes = [_b64(h, f"{where} proof") for h in proof]
        leaf_hash = (
            merkle.leaf_hash(leaf.encode("utf-8"))
            if isinstance(leaf, str)
            else _b64(item.get("leaf_hash"), where)
        )
        if index <= last:
            raise _fail(where, "entries are not in increasing index order")
        last = index
        if not 0 <= index < checkpoint.size:
            raise _fail(f"entry[{index}]", f"not in the checkpoint's tree of {checkpoint.size}")
        try:
            merkle.verify_inclusion(index, checkpoint.size, leaf_hash, hashes, checkpoint.root)
        except VerificationError as exc:
            raise _fail(f"entry[{index}]", f"inclusion proof: {exc}") from None
        if isinstance(leaf, str):
            yield index, leaf


def _packs(
    files: dict[str, bytes], manifest: dict[str, Any], groups: CountryGroups
) -> tuple[dict[str, RulePack], list[str]]:
    """The bundled packs, and notes. A pack that differs from gpucap's own pack of the same id
    and version is a substitution, and so is one whose digest is not the one the answer names;
    a pack this gpucap does not ship in that version can only be noted."""
    out, notes = {}, []
    named = _json(files, "headroom.json").get("provenance", {}).get("rulesets", [])
    digests = {r.get("id"): r.get("digest") for r in named if isinstance(r, dict)}
    for pack_id in manifest.get("rulesets", []):
        name = f"rulesets/{pack_id}.yaml"
        raw = files.get(name)
        if raw is None:
            raise _fail(name, "missing from the bundle")
        if digests.get(pack_id) != hashlib.sha256(raw).hexdigest():
            raise _fail(name, "is not the rule pack headroom.json's provenance names")
        pack = parse_ruleset(
            load_yaml_text(raw.decode("utf-8")), country_codes(), name, groups=groups
        )
        own_path = ruleset_path(pack.id)
        own = load_ruleset_file(own_path) if own_path.exists() else None
        if own is not None and own.version == pack.version:
            if own_path.read_bytes() != raw:
                raise _fail(name, f"differs from gpucap's own {pack.id} {pack.version}")
        else:
            notes.append(
                f"{name} ({pack.id} {pack.version}) is not shipped with this gpucap: its "
                "figures are the bundle's, not checked against a copy of your own"
            )
        out[pack.id] = pack
    return out, notes


def _groups(files: dict[str, bytes], same_gpucap: bool) -> CountryGroups:
    """The bundled country groups, which the packs are replayed with (like the catalogue, made
    by this gpucap version, they must be this gpucap's)."""
    name = "country-groups.yaml"
    raw = files.get(name)
    if raw is None:
        raise _fail(name, "missing from the bundle")
    if same_gpucap and raw != groups_path().read_bytes():
        raise _fail(name, f"differs from gpucap {gpucap.__version__}'s own")
    return parse_groups(load_yaml_text(raw.decode("utf-8")), country_codes(), name)


def _catalogue(files: dict[str, bytes], same_gpucap: bool) -> Catalogue:
    """The bundled catalogue (the catalogue has no version of its own: made by this gpucap
    version, it must be this gpucap's)."""
    own, own_thresholds = catalogue_paths()
    for name, path in (("catalogue.yaml", own), ("eccn-3a090.yaml", own_thresholds)):
        raw = files.get(name)
        if raw is None:
            raise _fail(name, "missing from the bundle")
        if same_gpucap and raw != path.read_bytes():
            raise _fail(name, f"differs from gpucap {gpucap.__version__}'s own")
    thresholds = parse_thresholds(load_yaml_text(files["eccn-3a090.yaml"].decode("utf-8")))
    doc = load_yaml_text(files["catalogue.yaml"].decode("utf-8"))
    return parse_catalogue(doc, thresholds, "catalogue.yaml")


# -- export ---------------------------------------------------------------------------------
def export(
    led: Ledger,
    path: Path,
    principal: Principal,
    scope: str | None = None,
    as_of: date | None = None,
    known: KnownAt | None = None,
    by: str = "cli",
) -> dict[str, Any]:
    """Write the bundle for what `principal` sees (`scope` entity:E: the bundle of entity E,
    with nothing about other entities); the manifest (without the files table)."""
    as_of = as_of or led.today()
    view = led.view_known(as_of, known or led.signed_now())
    size, entity = view.basis.log_size, principal.entity
    requested = None
    if scope:
        requested = parse_request_scope(scope, view.index, entity)
        require_visible(requested, entity, view.index)
        if requested[0] == "entity":
            entity = requested[1]  # a bundle for one entity holds nothing about the others
    headroom = {**view.document.answer(entity, requested), "provenance": led.provenance(view)}
    files: dict[str, bytes] = {"headroom.json": dumps(headroom)}
    not_reproducible = []
    with led.past.record(size) as rec:
        state = rec.registry
        assert state is not None  # view_known refused a prefix without a registry
        for n, check in enumerate(headroom["checks"]):
            rule, check_scope = check["rule"], check["scope"]
            k = pack_of(view.packs, rule, check["ruleset"])
            doc = explain_answer(
                rec, view.fleet, view.packs[k], view.indexes[k], as_of, rule, check_scope, entity
            )
            doc = {"as_of": as_of.isoformat(), **doc, "provenance": headroom["provenance"]}
            files[explain_name(n, rule, check_scope)] = dumps(doc)
            if entity is not None and not owned_by(check_scope, entity):
                not_reproducible.append(
                    {
                        "rule": rule,
                        "scope": check_scope,
                        "reason": f"its inputs reach beyond entity {entity}",
                        "used_tpp": check["used_tpp"],
                        "headroom_tpp": check["headroom_tpp"],
                        "status": check["status"],
                    }
                )
        site_ids = [s["id"] for s in headroom["sites"]]
        registry_sites = [s for s in rec.registry_fleet().sites if s.id in set(site_ids)]
        files["devices.csv"] = devices_csv(device_rows(rec, registry_sites))
        own_nodes = {n for s in site_ids for n in rec.site_nodes.get(s, ())}
        registry_doc = state.doc if entity is None else redacted_registry(state.doc, entity)
        files["registry.json"] = dumps({"origin": state.origin, "doc": registry_doc})
        registry_index = state.log_index
    entries = path.with_name(path.name + ".entries")
    try:
        with led.store.snapshot() as conn:
            tree = log.tree(conn)
            _write_entries(conn, entries, size, tree.size, entity, own_nodes, registry_index)
        files["checkpoint.txt"] = tree.note.encode("utf-8")
        files["verifier-key.txt"] = (led.signer.verifier_key + "\n").encode("utf-8")
        for pack in view.packs:
            files[f"rulesets/{pack.id}.yaml"] = ruleset_path(pack.id).read_bytes()
        catalogue, thresholds = catalogue_paths()
        files["catalogue.yaml"] = catalogue.read_bytes()
        files["eccn-3a090.yaml"] = thresholds.read_bytes()
        files["country-groups.yaml"] = groups_path().read_bytes()
        manifest = _manifest(scope, requested, entity, as_of, view.basis.known_at, size)
        manifest.update(
            checkpoint_size=tree.size,
            registry_log_index=registry_index,
            sites=site_ids,
            rulesets=[pack.id for pack in view.packs],
            exported_by=by,
            exported_at=headroom["provenance"]["generated_at"],
            not_reproducible=not_reproducible,
        )
        write_zip(path, files, manifest, entries)
    finally:
        entries.unlink(missing_ok=True)
    return manifest


def _manifest(
    scope: str | None,
    requested: tuple[str, str] | None,
    entity: str | None,
    as_of: date,
    known_at: str,
    size: int,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "scope": scope,
        "requested": None if requested is None else list(requested),
        "entity": entity,
        "as_of": as_of.isoformat(),
        "known_at": known_at,
        "log_size": size,
        "gpucap_version": gpucap.__version__,
    }


def _write_entries(
    conn: Any,
    out: Path,
    size: int,
    tree_size: int,
    entity: str | None,
    own_nodes: set[str],
    registry_index: int,
) -> None:
    """entries.jsonl: the bundled entries of the first `size`, each with its inclusion proof
    to the tree of `tree_size`, read a page at a time (twice: which, then with proofs)."""
    page = 5000

    def bundled() -> Iterator[dict[str, Any]]:
        for start in range(0, size, page):
            for idx, leaf in log.entries(conn, start, min(size, start + page)):
                item = _bundled(idx, leaf, entity, own_nodes, registry_index)
                if item is not None:
                    yield item

    chosen = [item["index"] for item in bundled()]
    proofs = log.inclusions(conn, chosen, tree_size)
    with out.open("w", encoding="utf-8") as stream:
        for item, (idx, leaf_hash, proof) in zip(bundled(), proofs, strict=True):
            assert item["index"] == idx
            item["proof"] = [base64.b64encode(h).decode() for h in proof]
            if "leaf" not in item:
                item["leaf_hash"] = base64.b64encode(leaf_hash).decode()
            stream.write(json.dumps(item, sort_keys=True) + "\n")


def _bundled(
    idx: int, leaf: str, entity: str | None, own_nodes: set[str], registry_index: int
) -> dict[str, Any] | None:
    """An entry as bundled, or None when the numbers do not depend on it (tokens; for an
    entity-scoped bundle, other entities' nodes). The registry entry of an entity-scoped bundle
    is represented by its hash alone: its text names other entities."""
    kind = json.loads(leaf)["kind"]
    if kind.startswith("token_"):
        return None
    if entity is None:
        return {"index": idx, "leaf": leaf}
    if kind == "registry":
        return {"index": idx} if idx == registry_index else None
    body = json.loads(leaf)["body"]
    return {"index": idx, "leaf": leaf} if body.get("node_id") in own_nodes else None


def redacted_registry(doc: Any, entity: str) -> dict[str, Any]:
    """A registry document reduced to one entity: its entry, sites and inventory lines, the
    licences it holds (naming only its own sites; one left naming no place is left out) and
    their shipments to its sites, and the facts of the countries it has sites in. A line of
    the entity naming a licence left out keeps no licence: that licence could not cover it
    (another licensee, or a site it does not name), so no figure of the entity moves."""
    sites = [s for s in doc.get("sites", []) if s.get("entity") == entity]
    own = {s.get("id") for s in sites}
    countries = {s.get("country") for s in sites}
    dropped = ("entities", "sites", "inventory", "countries", "licences", "shipments")
    out = {k: v for k, v in doc.items() if k not in dropped}
    out["entities"] = [e for e in doc.get("entities", []) if e.get("id") == entity]
    out["sites"] = sites
    licences = [_own_part(lic, own) for lic in doc.get("licences", [])]
    licences = [lic for lic in licences if lic.get("licensee") == entity and _places(lic)]
    held = {lic.get("id") for lic in licences}
    if "licences" in doc:
        out["licences"] = licences
    if "shipments" in doc:
        out["shipments"] = [
            s for s in doc["shipments"] if s.get("licence") in held and s.get("site") in own
        ]
    out["inventory"] = [
        ln if ln.get("licence") in held or "licence" not in ln else _without_licence(ln)
        for ln in doc.get("inventory", [])
        if ln.get("site") in own
    ]
    if "countries" in doc:
        out["countries"] = {c: v for c, v in doc["countries"].items() if c in countries}
    return out


def _without_licence(line: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k != "licence"}


def _own_part(licence: dict[str, Any], own: set[Any]) -> dict[str, Any]:
    if "sites" not in licence:
        return licence
    return {**licence, "sites": [s for s in licence["sites"] if s in own]}


def _places(licence: dict[str, Any]) -> bool:
    return bool(licence.get("sites") or licence.get("countries"))
