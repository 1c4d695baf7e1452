"""Plain-text table of checks as the API returns them (for `gpucap headroom`/`whatif`)."""

from __future__ import annotations

import io
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


def checks_table(checks: list[dict[str, Any]], width: int = 160) -> str:
    """One row per check: rule, scope, status, used, limit or share, headroom (TPP and H100e)."""
    table = Table(box=box.SIMPLE)
    for col in ("rule", "scope", "status", "used TPP", "limit", "headroom TPP (H100e)"):
        table.add_column(col)
    for c in checks:
        if "limit_tpp" in c:
            limit = f"{c['limit_tpp']:,.0f}"
        else:
            share = "-" if c.get("share") is None else f"{c['share']:.1%}"
            limit = f"share {share} / {c['limit_share']:.0%}"
        table.add_row(
            c["rule"],
            c["scope"],
            c["status"],
            f"{c['used_tpp']:,.0f}",
            limit,
            f"{c['headroom_tpp']:,.0f} ({c['headroom_h100e']:,.1f})",
        )
    out = io.StringIO()
    Console(file=out, width=width, no_color=True).print(table)
    return out.getvalue().rstrip()
