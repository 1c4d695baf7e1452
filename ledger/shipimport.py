"""`gpucap shipments import FILE.csv --licence ID --site S`: shipments appended to the registry
document, recorded like a registry edit (a `registry` entry with the whole document and the
previous digest, so the change shows in `gpucap ledger events`).

The file's header names the columns `serial`, `model` and `shipped`, each once, in any order
and nothing else. Every row is checked (a serial: non-empty, at most 128 characters, no control
character, no surrounding whitespace, not twice in the file nor shipped already; `model`: a
catalogue id; `shipped`: YYYY-MM-DD); the first problem is one InputError naming
`FILE.csv:LINE:column`, and nothing is written. Rows become one shipment per (model, shipped
date), in the order first seen, with ids `csv-<digest>-<n>`: the digest is SHA-256 over the
licence, the site and the file's bytes, so importing the same file again for the same licence
and site finds its shipments recorded already and changes nothing.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpucap.core.catalogue import Catalogue, default_catalogue
from gpucap.core.data import parse_day
from gpucap.core.errors import InputError
from gpucap.core.text import control_character

if TYPE_CHECKING:
    from gpucap.ledger.store import Store

COLUMNS = ("serial", "model", "shipped")
ACTOR = "shipments-import"
_SERIAL_MAX = 128  # as the registry format's serials


@dataclass(frozen=True)
class Row:
    """One row of the file: its line number (of its first physical line) and its values."""

    line: int
    serial: str
    model: str
    shipped: str  # YYYY-MM-DD


@dataclass(frozen=True)
class Outcome:
    """What an import did: the shipments (as registry entries) and whether it recorded them."""

    shipments: tuple[dict[str, Any], ...]
    recorded: bool  # False: the same file was imported already, nothing changed
    digest: str  # the registry digest in force afterwards


# -- the file (pure) --------------------------------------------------------------------------
def parse_rows(data: bytes, name: str, catalogue: Catalogue) -> list[Row]:
    """The rows of a shipments file, each checked on its own and against the file's others."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(name, f"not UTF-8 (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{name}:1", f"no header row (expected {', '.join(COLUMNS)})")
        where = _header(header, name)
        rows: list[Row] = []
        seen: dict[str, int] = {}
        start = reader.line_num + 1
        for fields in reader:
            line, start = start, reader.line_num + 1
            rows.append(_row(fields, line, where, name, catalogue, seen))
    except csv.Error as exc:
        raise InputError(f"{name}:{reader.line_num}", f"not valid CSV: {exc}") from None
    if not rows:
        raise InputError(f"{name}:2", "no shipment rows after the header")
    return rows


def _header(header: Sequence[str], name: str) -> dict[str, int]:
    where: dict[str, int] = {}
    for i, column in enumerate(header):
        label = column
        if label not in COLUMNS:
            expected = ", ".join(COLUMNS)
            raise InputError(f"{name}:1:{label}", f"unknown column (expected {expected})")
        if label in where:
            raise InputError(f"{name}:1:{label}", "column given twice")
        where[label] = i
    for column in COLUMNS:
        if column not in where:
            raise InputError(f"{name}:1:{column}", "missing column")
    return where


def _row(
    fields: Sequence[str],
    line: int,
    where: Mapping[str, int],
    name: str,
    catalogue: Catalogue,
    seen: dict[str, int],
) -> Row:
    if len(fields) != len(COLUMNS):
        raise InputError(f"{name}:{line}", f"expected {len(COLUMNS)} fields, found {len(fields)}")
    serial, model, shipped = (fields[where[c]] for c in COLUMNS)
    path = f"{name}:{line}:serial"
    if not serial:
        raise InputError(path, "must not be empty")
    reason = control_character(serial)
    if reason is not None:
        raise InputError(path, f"contains a {reason}")
    if serial != serial.strip():
        raise InputError(path, "must not begin or end with whitespace")
    if len(serial) > _SERIAL_MAX:
        raise InputError(path, f"longer than {_SERIAL_MAX} characters")
    if serial in seen:
        raise InputError(path, f"serial {serial!r} is listed twice (first on line {seen[serial]})")
    seen[serial] = line
    if catalogue.get(model) is None:
        reason = f"unknown model {model!r} (a catalogue id: see gpucap catalogue)"
        raise InputError(f"{name}:{line}:model", reason)
    try:
        day = parse_day(shipped)
    except ValueError as exc:
        raise InputError(f"{name}:{line}:shipped", str(exc)) from None
    return Row(line, serial, model, day.isoformat())


def import_digest(data: bytes, licence: str, site: str) -> str:
    """What names the file's shipments: SHA-256 over the licence, the site and the bytes."""
    h = hashlib.sha256()
    for part in (licence.encode(), site.encode()):
        h.update(len(part).to_bytes(8, "big") + part)
    h.update(data)
    return h.hexdigest()


def shipments(rows: Sequence[Row], licence: str, site: str, digest: str) -> list[dict[str, Any]]:
    """One registry shipment per (model, shipped date), in the order the rows first name it."""
    groups: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        groups.setdefault((row.model, row.shipped), []).append(row.serial)
    return [
        {
            "id": f"csv-{digest[:16]}-{n}",
            "licence": licence,
            "site": site,
            "shipped": shipped,
            "model": model,
            "serials": serials,
        }
        for n, ((model, shipped), serials) in enumerate(groups.items(), start=1)
    ]


def amend(
    doc: Mapping[str, Any], rows: Sequence[Row], new: Sequence[dict[str, Any]], name: str
) -> dict[str, Any] | None:
    """The registry document with `new` shipments appended; None when they are in it already
    (the same file imported before). InputError naming the row of a serial shipped already."""
    present = {s.get("id"): s for s in doc.get("shipments", [])}
    if all(present.get(s["id"]) == s for s in new):
        return None
    shipped = {
        serial: s.get("id") for s in doc.get("shipments", []) for serial in s.get("serials", [])
    }
    for row in rows:
        if row.serial in shipped:
            raise InputError(
                f"{name}:{row.line}:serial",
                f"serial {row.serial!r} was shipped already (shipment {shipped[row.serial]})",
            )
    for s in new:
        if s["id"] in present:  # the same digest with other contents: an edited registry
            raise InputError(name, f"shipment id {s['id']} is in the registry with other serials")
    return {**doc, "shipments": [*doc.get("shipments", []), *new]}


def _known(doc: Mapping[str, Any], licence: str, site: str) -> None:
    if not any(item.get("id") == licence for item in doc.get("licences", [])):
        raise InputError("--licence", f"no licence with id {licence!r} in the current registry")
    if not any(item.get("id") == site for item in doc.get("sites", [])):
        raise InputError("--site", f"no site with id {site!r} in the current registry")


# -- the ledger's side ------------------------------------------------------------------------
def import_file(
    store: Store,
    data: bytes,
    name: str,
    licence: str,
    site: str,
    now: datetime,
    catalogue: Catalogue | None = None,
) -> Outcome:
    """Check the file against the registry in force and record the amended document, in one
    transaction (on PostgreSQL under the `ledger_state` lock that registry writes take)."""
    from gpucap.ledger import db, ingest, log
    from gpucap.ledger.settings import iso_instant

    catalogue = catalogue or default_catalogue()
    rows = parse_rows(data, name, catalogue)
    new = shipments(rows, licence, site, import_digest(data, licence, site))
    recorded_at = iso_instant(now)
    with ingest.transaction(store) as txn:
        if not store.is_sqlite:
            db.lock_state(txn.conn)
        current = db.registry(txn.conn)
        if current is None:
            raise InputError("--db", "no registry loaded (gpucap ledger serve --registry FILE)")
        doc = json.loads(current.doc)
        _known(doc, licence, site)
        changed = amend(doc, rows, new, name)
        if changed is None:
            return Outcome(tuple(new), False, current.digest)
        ingest.load_registry_doc(changed, current.origin, catalogue)  # the registry's own rules
        canonical = json.loads(log.canonical(changed))
        ingest.apply_registry(txn, canonical, current.origin, recorded_at)
        body = {"origin": current.origin, "doc": canonical, "previous_digest": current.digest}
        txn.append("registry", ACTOR, body, recorded_at)
        digest = hashlib.sha256(log.canonical(canonical).encode()).hexdigest()
    return Outcome(tuple(new), True, digest)


# -- the command ------------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    """`gpucap shipments import`."""
    p = subparsers.add_parser("shipments", help="record shipments under a licence")
    sub = p.add_subparsers(dest="shipments_command", metavar="SUBCOMMAND", required=True)
    imp = sub.add_parser("import", help="append a CSV of shipped serials to the registry")
    imp.add_argument("file", type=Path, metavar="FILE.csv", help="columns serial, model, shipped")
    imp.add_argument("--licence", required=True, help="the licence the devices were shipped under")
    imp.add_argument("--site", required=True, help="the site they were shipped to")
    imp.add_argument("--db", help="database URL (default: GPUCAP_DB or sqlite:///gpucap.db)")
    imp.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from gpucap.ledger import log
    from gpucap.ledger.settings import Settings, utc_now
    from gpucap.ledger.store import Store

    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise InputError(str(args.file), f"cannot read: {exc.strerror or exc}") from None
    settings = Settings.from_env(os.environ, db_url=args.db)
    store = Store.open_existing(settings)
    try:
        done = import_file(store, data, str(args.file), args.licence, args.site, utc_now())
        if done.recorded:
            signer = log.load_signer(store, settings.log_origin, settings.log_key_file)
            log.integrate(store, signer, utc_now(), settings.log_checkpoint_keep_s)
    finally:
        store.close()
    serials = sum(len(s["serials"]) for s in done.shipments)
    ids = ", ".join(s["id"] for s in done.shipments)
    if not done.recorded:
        print(f"{args.file} was imported already ({ids}): nothing recorded")
        return 0
    print(
        f"recorded {len(done.shipments)} shipments ({ids}), {serials} serials, under licence "
        f"{args.licence} to site {args.site}; registry digest {done.digest}"
    )
    return 0
