"""`gpucap evaluate` and `gpucap catalogue`."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

from gpucap.core.data import parse_day
from gpucap.core.errors import InputError


def _as_of(text: str) -> date:
    try:
        return parse_day(text)
    except ValueError as exc:
        raise InputError("--as-of", str(exc)) from None


def register(subparsers: Any) -> None:
    ev = subparsers.add_parser(
        "evaluate",
        help="evaluate a scenario file against its rule pack",
        description="Exit 0: nothing breached; 1: a cap is breached; 2: invalid input.",
    )
    ev.add_argument("scenario", type=Path, help="scenario file (YAML or JSON)")
    ev.add_argument("--as-of", help="evaluation date YYYY-MM-DD (overrides the file's as_of)")
    ev.add_argument("--format", choices=("table", "json"), default="table")
    ev.set_defaults(func=run_evaluate)

    cat = subparsers.add_parser("catalogue", help="list the accelerator catalogue")
    cat.add_argument("--format", choices=("table", "json"), default="table")
    cat.set_defaults(func=run_catalogue)


def run_evaluate(args: argparse.Namespace) -> int:
    from gpucap.core.engine import evaluate
    from gpucap.core.report import evaluation_to_dict, render_table
    from gpucap.core.ruleset import load_ruleset
    from gpucap.core.scenario import load_scenario

    as_of = _as_of(args.as_of) if args.as_of else None
    fleet = load_scenario(args.scenario)
    pack = load_ruleset(fleet.ruleset)
    as_of = as_of or fleet.as_of
    if as_of is None:
        raise InputError("as_of", "no evaluation date: set as_of in the file or pass --as-of")
    result = evaluate(fleet, pack, as_of)
    if args.format == "json":
        json.dump(evaluation_to_dict(result), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_table(result))
    return 1 if result.verdict == "breach" else 0


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
                "source": acc.source,
                "confidence": acc.confidence,
            }
        )
    return rows


def run_catalogue(args: argparse.Namespace) -> int:
    rows = catalogue_rows()
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="gpucap accelerator catalogue", title_justify="left")
    for name in ("id", "vendor", "pci ids", "TPP", "H100e", "PD", "class", "confidence"):
        table.add_column(name)
    for r in rows:
        pd = "-" if r["performance_density"] is None else f"{r['performance_density']:.2f}"
        table.add_row(
            r["id"],
            r["vendor"],
            ",".join(r["pci_device_ids"]) or "-",
            f"{r['tpp']:,}",
            f"{r['h100e']:.2f}",
            pd,
            r["eccn_paragraph"] or r["eccn_class"],
            r["confidence"],
        )
    Console(width=140).print(table)
    return 0
