"""`gpucap evaluate` and `gpucap catalogue`."""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path
from typing import Any

from gpucap.core import output
from gpucap.core.data import parse_day
from gpucap.core.errors import InputError

# (JSON and CSV key, table heading) of the catalogue listing; the JSON rows hold more keys.
CATALOGUE_COLUMNS = (
    ("id", "id"),
    ("vendor", "vendor"),
    ("pci_device_ids", "pci ids"),
    ("tpp", "TPP"),
    ("h100e", "H100e"),
    ("performance_density", "PD"),
    ("eccn_class", "class"),
    ("eccn_paragraph", "paragraph"),
    ("confidence", "confidence"),
)


def _as_of(text: str) -> date:
    try:
        return parse_day(text)
    except ValueError as exc:
        raise InputError("--as-of", str(exc)) from None


def register(subparsers: Any) -> None:
    ev = subparsers.add_parser(
        "evaluate",
        help="evaluate a scenario file against its rule packs",
        description="Exit 0: nothing breached; 1: a cap is breached; 2: invalid input.",
    )
    ev.add_argument("scenario", type=Path, help="scenario file (YAML or JSON)")
    ev.add_argument("--as-of", help="evaluation date YYYY-MM-DD (overrides the file's as_of)")
    ev.add_argument(
        "--ruleset",
        action="append",
        metavar="ID",
        help="rule pack to evaluate; repeat for several (overrides the file's ruleset/rulesets)",
    )
    output.add_format_flags(ev, formats=output.DOCUMENT_FORMATS)
    ev.set_defaults(func=run_evaluate)

    cat = subparsers.add_parser("catalogue", help="list the accelerator catalogue")
    output.add_format_flags(cat)
    cat.set_defaults(func=run_catalogue)


def run_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gpucap.core.engine import evaluate
    from gpucap.core.report import document, render_document
    from gpucap.core.scenario import fleet_packs, load_packs, load_scenario

    as_of = _as_of(args.as_of) if args.as_of else None
    fleet = load_scenario(args.scenario)
    if args.ruleset:
        packs = load_packs(args.ruleset, "--ruleset", indexed=False)
        ids = tuple(p.id for p in packs)
        fleet = replace(fleet, ruleset=ids[0], rulesets=ids)
    else:
        packs = fleet_packs(fleet)
    as_of = as_of or fleet.as_of
    if as_of is None:
        raise InputError("as_of", "no evaluation date: set as_of in the file or pass --as-of")
    doc = document([evaluate(fleet, pack, as_of) for pack in packs])
    if args.format in ("json", "yaml"):
        sys.stdout.write(output.document(doc, args.format))
    else:
        sys.stdout.write(render_document(doc))
    return 1 if doc["verdict"] == "breach" else 0


def catalogue_rows() -> list[dict[str, Any]]:
    """The catalogue as JSON rows, with the computed class and density."""
    from gpucap.core.catalogue import default_catalogue

    cat = default_catalogue()
    rows = []
    for acc in cat.accelerators:
        density = acc.classification.performance_density
        rows.append(
            {
                "id": acc.id,
                "vendor": acc.vendor,
                "name": acc.name,
                "architecture": acc.architecture,
                "pci_vendor_id": f"0x{acc.pci_vendor_id:04x}",
                "pci_device_ids": [f"0x{d:04x}" for d in acc.pci_device_ids],
                "nvml_names": list(acc.nvml_names),
                "tpp": acc.tpp,
                "h100e": round(float(cat.h100e(acc.tpp)), 3),
                "die_area_mm2": acc.die_area_mm2,
                "performance_density": None if density is None else round(float(density), 2),
                "datacenter": acc.datacenter,
                "eccn_class": acc.eccn_class,
                "eccn_paragraph": acc.classification.paragraph,
                "tpp_basis": acc.tpp_basis,
                "memory_bandwidth_gbps": acc.memory_bandwidth_gbps,
                "memory_bandwidth_source": acc.memory_bandwidth_source,
                "memory_bandwidth_confidence": acc.memory_bandwidth_confidence,
                "source": acc.source,
                "confidence": acc.confidence,
            }
        )
    return rows


def run_catalogue(args: argparse.Namespace) -> int:
    rows = catalogue_rows()
    # The table: TPP whole, H100e and performance density to two decimals; csv, json and yaml
    # keep the rows' values.
    cells = [
        [
            r["id"],
            r["vendor"],
            ",".join(r["pci_device_ids"]) or "-",
            output.tpp_text(r["tpp"]),
            output.h100e_text(r["h100e"]),
            "-" if r["performance_density"] is None else f"{r['performance_density']:.2f}",
            r["eccn_class"],
            r["eccn_paragraph"] or "-",
            r["confidence"],
        ]
        for r in rows
    ]
    text = output.render(
        rows,
        CATALOGUE_COLUMNS,
        args.format,
        headers=args.headers,
        display=cells,
        right=("tpp", "h100e", "performance_density"),
        width=140,
    )
    sys.stdout.write(text)
    return 0
