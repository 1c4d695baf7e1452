"""`GET /v1/explain`: one check's figures, line by line, down to the devices and log entries.

The record of a log prefix (`record.py`) is split into pieces the engine's `explain` sums: each
declared line of the registry, and each observed line split by node and by the entry that
introduced its devices. A piece's contribution is labelled with the figure it adds to
(`used_tpp`, or for share rules also `total_tpp`), so the contributions of each figure add up to
it exactly. With several packs evaluated together, a rule id names its pack unless two packs
share it: then the caller names the pack (`ruleset`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

from gpucap.core.errors import InputError
from gpucap.core.explain import Explanation, Piece, explain
from gpucap.core.fleet import Fleet, Line
from gpucap.core.report import check_to_dict, tpp_number
from gpucap.core.ruleset import RulePack
from gpucap.ledger.errors import AuthError
from gpucap.ledger.record import Record, observed_by_node, spec_line
from gpucap.ledger.views import FleetIndex, can_see, normal_scope


def pieces(record: Record, fleet: Fleet) -> Callable[[str], Sequence[Piece]]:
    """A site's pieces: its declared lines, then its observed lines by node and entry."""
    declared: dict[str, list[Piece]] = {}
    registry = record.registry
    log_index = None if registry is None else registry.log_index
    for line in record.registry_fleet().lines:
        tag = {"source": "declared", "log_index": log_index}
        declared.setdefault(line.site, []).append(Piece(line, tag))

    def of_site(site: str) -> Sequence[Piece]:
        out = list(declared.get(site, ()))
        for spec, nodes in sorted(observed_by_node(record, site).items()):
            for node, rows in nodes:
                by_entry: dict[int, list[Any]] = {}
                for row in rows:
                    by_entry.setdefault(node.introduced[row.facts.uuid], []).append(row)
                for index, group in sorted(by_entry.items()):
                    devices = [
                        {
                            "uuid": r.facts.uuid,
                            "serial": node.labels.get(r.facts.uuid, (None, None))[0],
                            "model": r.facts.model,
                            "tpp": r.facts.tpp,
                        }
                        for r in group
                    ]
                    tag = {
                        "source": "observed",
                        "node": node.node_id,
                        "devices": devices,
                        "log_index": index,
                    }
                    out.append(Piece(spec_line(spec, len(group)), tag))
        return out

    return of_site


def pack_of(packs: Sequence[RulePack], rule: str, ruleset: str | None = None) -> int:
    """The position in `packs` of the pack whose rule `rule` is explained: `ruleset`'s, else
    the one pack that has the rule. InputError names `ruleset` (not evaluated, or needed to
    choose between packs sharing the rule id) or `rule` (in none of them)."""
    ids = [p.id for p in packs]
    if ruleset is not None:
        if ruleset not in ids:
            raise InputError(
                "ruleset",
                f"rule pack {ruleset!r} is not evaluated here (evaluated: {', '.join(ids)})",
            )
        return ids.index(ruleset)
    having = [k for k, p in enumerate(packs) if any(r.id == rule for r in p.rules)]
    if len(having) == 1:
        return having[0]
    if not having:
        if len(packs) == 1:
            return 0  # the engine's own message names the pack's rules
        rules = ", ".join(f"{p.id}: {' '.join(r.id for r in p.rules)}" for p in packs)
        raise InputError("rule", f"no rule {rule!r} in any evaluated pack ({rules})")
    named = " and ".join(ids[k] for k in having)
    raise InputError("ruleset", f"rule {rule!r} is in {named}: name one with ruleset")


def explain_answer(
    record: Record,
    fleet: Fleet,
    pack: RulePack,
    index: FleetIndex,
    as_of: date,
    rule: str,
    scope: str,
    entity: str | None,
) -> dict[str, Any]:
    """The explain document (without provenance) for a caller limited to `entity`; a country
    code in `scope` is case-insensitive."""
    scope = normal_scope(scope)
    if not can_see(scope, entity, index):
        raise AuthError(
            403, "scope_forbidden", f"operator token for {entity!r} may not see {scope}"
        )
    made = explain(fleet, pack, as_of, rule, scope, pieces(record, fleet))
    return document(made, fleet, index, pack)


def document(made: Explanation, fleet: Fleet, index: FleetIndex, pack: RulePack) -> dict[str, Any]:
    check = made.check
    sites = {s.id: s for s in fleet.sites}
    contributions = []
    for c in made.contributions:
        line: Line = c.piece.line
        site = sites[line.site]
        tag = c.piece.tag
        item: dict[str, Any] = {
            "site": site.id,
            "entity": site.entity,
            "country": site.country,
            "source": tag["source"],
            "figure": c.figure,
            "model": line.model,
            "count": line.count,
            "tpp_each": tpp_number(line.tpp_per_device),
            "tpp": tpp_number(c.tpp),
            "installed": line.installed.isoformat(),
            "removed": None if line.removed is None else line.removed.isoformat(),
        }
        if tag["source"] == "observed":
            item["node"] = tag["node"]
            item["devices"] = tag["devices"]
        item["log_index"] = tag["log_index"]
        contributions.append(item)
    figures = {"used_tpp": tpp_number(made.total("used_tpp"))}
    if check.total_tpp is not None:
        figures["total_tpp"] = tpp_number(made.total("total_tpp"))
    return {
        **check_to_dict(check, pack.h100e_tpp, pack.id),
        "figures": figures,
        "contributions": contributions,
    }
