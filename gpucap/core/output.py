"""What every listing command prints: its rows as a table or CSV, its document as JSON or YAML.

`add_format_flags` gives a command `-o/--format table|json|csv|yaml` and `--no-headers`, and
`render` answers them, so that every listing reads and prints alike. JSON and YAML are the same
document (YAML: PyYAML's safe dumper, libyaml's when PyYAML has it, keys in the document's
order); table and CSV are its rows, under a header row unless `--no-headers`. A command that
prints a document rather than rows (`evaluate`) uses `document`. Rich is imported only to draw
a table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal

import yaml

FORMATS = ("table", "json", "csv", "yaml")
DOCUMENT_FORMATS = ("table", "json", "yaml")  # a command whose text form is not rows
Columns = Sequence[tuple[str, str]]  # (JSON and CSV key, table heading), in order

_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def add_format_flags(
    parser: argparse.ArgumentParser,
    *,
    default: str | None = "table",
    formats: Sequence[str] = FORMATS,
    what: str = "",
) -> None:
    """`-o/--format` (`args.format`) and, where there are rows, `--no-headers` (`args.headers`,
    False when given). `default` None: the command decides (`ledger token` without `--list`)."""
    shown = default or "table"
    parser.add_argument(
        "-o",
        "--format",
        choices=formats,
        default=default,
        help=f"output format{what} (default {shown})",
    )
    if "csv" in formats:
        parser.add_argument(
            "--no-headers",
            dest="headers",
            action="store_false",
            help="table and csv: leave out the header row",
        )


def document(doc: Any, fmt: str) -> str:
    """A JSON-shaped document as `json` (indented) or `yaml` text, ending with a newline."""
    if fmt == "yaml":
        text: str = yaml.dump(
            doc, Dumper=_DUMPER, sort_keys=False, allow_unicode=True, default_flow_style=False
        )
        return text
    return json.dumps(doc, indent=2) + "\n"


def cell(value: Any) -> str:
    """A value as one table or CSV cell: nothing for None, `k:v k:v` for a mapping, a list
    joined by commas."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return " ".join(f"{k}:{v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value)
    return str(value)


def table(
    cells: Sequence[Sequence[str]],
    columns: Columns,
    *,
    headers: bool = True,
    right: Collection[str] = (),
    fold: Collection[str] = (),
    width: int = 200,
) -> str:
    """Rows of cell text as a Rich table without borders: the heading row (unless `headers`
    is False) and its rule, then one line per row. Columns named in `right` are right-aligned;
    those in `fold` wrap instead of squeezing the others."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = Table(box=box.SIMPLE_HEAD, show_header=headers)
    for key, heading in columns:
        # As wide as the heading even where it is left out: the rows read the same either way.
        width_ = len(heading)
        if key in fold:
            out.add_column(heading, overflow="fold", min_width=width_)
        else:
            justify: Literal["left", "right"] = "right" if key in right else "left"
            out.add_column(heading, justify=justify, no_wrap=True, min_width=width_)
    for row in cells:
        # Text cells: a name with brackets is printed as it is, never read as Rich markup.
        out.add_row(*(Text(c) for c in row))
    buffer = io.StringIO()
    Console(file=buffer, width=width, force_terminal=False, color_system=None).print(out)
    lines = [line.rstrip() for line in buffer.getvalue().splitlines()]
    return "\n".join(lines).strip("\n") + "\n"  # no blank lines around the table


def render(
    rows: Sequence[Mapping[str, Any]],
    columns: Columns,
    fmt: str,
    doc: Any = None,
    *,
    headers: bool = True,
    display: Sequence[Sequence[str]] | None = None,
    right: Collection[str] = (),
    fold: Collection[str] = (),
    width: int = 200,
) -> str:
    """Rows as `table`, `csv` (a header row of the keys), or `json`/`yaml` (`doc`, else the rows
    as a list). `display`: the table's cell text where it is not `cell` of each value (rounded
    figures); CSV always carries the values themselves."""
    if fmt in ("json", "yaml"):
        return document(list(rows) if doc is None else doc, fmt)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if headers:
            writer.writerow([key for key, _ in columns])
        writer.writerows([cell(row.get(key)) for key, _ in columns] for row in rows)
        return buffer.getvalue()
    if display is None:
        display = [[cell(row.get(key)) for key, _ in columns] for row in rows]
    return table(display, columns, headers=headers, right=right, fold=fold, width=width)


def tpp_text(value: float) -> str:
    """A TPP figure for a table: whole TPP with thousands separators (JSON keeps it exact)."""
    return f"{value:,.0f}"


def h100e_text(value: float) -> str:
    """An H100e figure for a table: two decimals."""
    return f"{value:,.2f}"
