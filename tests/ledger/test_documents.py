"""Cached headroom answers (bytes per view, caller and scope; documents made from their
predecessor's entries; tallies re-added from the changed sites) equal answers built from
scratch, after random changes, for several scopes and entity-scoped operators."""

from __future__ import annotations

import json
import random
from datetime import date
from pathlib import Path

import pytest

from gpucap.core.engine import evaluate
from gpucap.core.report import evaluation_to_dict
from gpucap.ledger import ingest, replay
from gpucap.ledger.app import headroom_answer, headroom_body
from gpucap.ledger.documents import Document
from gpucap.ledger.errors import AuthError
from gpucap.ledger.models import Report
from gpucap.ledger.service import Ledger
from gpucap.ledger.tokens import Principal
from gpucap.ledger.views import filtered, parse_request_scope, require_visible
from tests.ledger.support import Clock, device, report

ENTITIES = ("acme", "nimbus", "orbit")
COUNTRIES = ("AE", "US", "IN", "DE", "HK", "CN", "SG")


def _registry(n_sites: int, inventory: int) -> str:
    """A registry of `n_sites` sites (more than one block of the whole document's JSON) with
    a territory (HK, treated as CN) and one declared line."""
    sites = [
        {"id": f"s{i:03d}", "entity": ENTITIES[i % 3], "country": COUNTRIES[i % len(COUNTRIES)]}
        for i in range(n_sites)
    ]
    doc = {
        "ruleset": "us-bis-ai-diffusion-2025",
        "countries": {"AE": {"gov_agreement": True}},
        "entities": [
            {"id": "acme", "headquarters": "US", "status": "uveu"},
            {"id": "nimbus", "headquarters": "AE", "status": "nveu", "nveu_countries": ["AE"]},
            {"id": "orbit", "headquarters": "IN"},
        ],
        "sites": sites,
        "inventory": [
            {
                "site": "s001",
                "model": "h100-sxm5-80gb",
                "count": inventory,
                "installed": "2025-06-01",
            }
        ],
    }
    return json.dumps(doc)


def _rep(node: str, site: str, seq: int, devices: list[dict[str, object]]) -> Report:
    return Report.model_validate_json(json.dumps(report(node, site, seq, devices)))


def _asks(led: Ledger, rng: random.Random) -> list[tuple[Principal, str | None]]:
    """Callers and scopes: the whole fleet, countries (a territory too), entities and sites, by
    an unscoped and by entity-scoped operators (only scopes they may see)."""
    admin = Principal("a", "operator", operator="root")
    scopes: list[str | None] = [None, "country:AE", "country:HK", "country:CN", "country:US"]
    scopes += [f"entity:{e}" for e in ENTITIES]
    scopes += [f"site:s{rng.randrange(130):03d}" for _ in range(3)]
    callers = [admin, *(Principal(e, "operator", operator="ops", entity=e) for e in ENTITIES)]
    return [(p, s) for p in callers for s in scopes]


def _check_answers(led: Ledger, day: date, rng: random.Random) -> None:
    view = led.view(day)
    fresh = evaluation_to_dict(evaluate(view.fleet, led.pack(view.fleet.ruleset), day))
    fresh_doc = Document(view.evaluation, view.index)  # no predecessor, nothing cached
    asks = _asks(led, rng)
    rng.shuffle(asks)  # scoped answers before and after the whole one, in any order
    for principal, scope in asks:
        requested = None if scope is None else parse_request_scope(scope, view.index)
        if requested is not None:
            try:
                require_visible(requested, principal.entity, view.index)
            except AuthError:
                continue
        want = filtered(fresh, view.index, principal.entity, requested)
        body = view.document.body(principal.entity, requested)
        assert body == json.dumps(want).encode(), (principal.entity, scope)
        assert view.document.body(principal.entity, requested) is body  # cached
        assert fresh_doc.body(principal.entity, requested) == body
        # The route's answer is the cached document with the provenance block joined on.
        answer = json.loads(headroom_body(led, principal, scope, day.isoformat()))
        assert answer.pop("provenance")["log_size"] == view.basis.log_size
        assert answer == want
        answer = headroom_answer(led, principal, scope, day.isoformat())
        assert answer.pop("provenance")["registry_digest"] == view.basis.registry_digest
        assert answer == want


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cached_answers_equal_fresh_ones_after_random_changes(
    ledger: Ledger, clock: Clock, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)  # noqa: S311 (test data, not secrets)
    registries = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    registries[0].write_text(_registry(130, 1000), encoding="utf-8")
    registries[1].write_text(_registry(130, 999), encoding="utf-8")
    ledger.load_registry_file(registries[0])
    nodes = {f"n{i}": f"s{rng.randrange(130):03d}" for i in range(12)}
    seqs: dict[str, int] = {}
    closed: set[str] = set()
    days = [date(2025, 9, 1), date(2026, 3, 1)]
    for step in range(30):
        clock.moment = clock.moment.replace(minute=step)
        what = rng.random()
        open_nodes = sorted(n for n in nodes if n not in closed)
        if what < 0.75 and open_nodes:
            node = rng.choice(open_nodes)
            seqs[node] = seqs.get(node, 0) + 1
            picked = sorted(rng.sample(range(12), rng.randint(0, 8)))
            model = rng.choice(["h100-sxm5-80gb", "h20-96gb"])
            devices = [
                device(i, node) if model.startswith("h100") else _h20(i, node) for i in picked
            ]
            ledger.ingest(_rep(node, nodes[node], seqs[node], devices))
        elif what < 0.82 and seqs:
            node = rng.choice(sorted(seqs))
            if node not in closed:
                ingest.decommission(ledger.store, node, clock(), "operator:test")
                closed.add(node)
        elif what < 0.92:
            ledger.load_registry_file(registries[step % 2])
        else:
            replay.rebuild(ledger.store, ledger.catalogue)
        _check_answers(ledger, rng.choice(days), rng)


def test_a_date_not_asked_for_many_versions_is_brought_up_to_date(
    ledger: Ledger, clock: Clock, tmp_path: Path
) -> None:
    """More patches than the line cache remembers between two looks at one date: the sites
    that changed are found by comparing each site's lines."""
    rng = random.Random(7)  # noqa: S311 (test data, not secrets)
    path = tmp_path / "r.yaml"
    path.write_text(_registry(130, 1000), encoding="utf-8")
    ledger.load_registry_file(path)
    rare, often = date(2026, 3, 1), date(2025, 9, 1)
    _check_answers(ledger, rare, rng)
    first = ledger._lineset
    assert first is not None
    for seq in range(1, 91):
        clock.moment = clock.moment.replace(minute=seq % 60)
        node = f"n{seq % 9}"
        devices = [device(i, node) for i in range(seq % 5 + 1)]
        ledger.ingest(_rep(node, f"s{(seq % 9) * 7:03d}", seq // 9 + 1, devices))
        ledger.view(often)
    lineset = ledger._lineset
    assert lineset is not None
    assert lineset.sites_changed_since(first.version) is None  # beyond what it remembers
    _check_answers(ledger, rare, rng)
    _check_answers(ledger, often, rng)


def _h20(i: int, node: str) -> dict[str, object]:
    """An H20 (not a controlled-class device under the pack: counted as other devices)."""
    return device(
        i,
        node,
        uuid=f"GPU-{node}-h20-{i:04d}",
        serial=f"H{node}{i:04d}",
        pci_device_id="0x2329",
        name="NVIDIA H20",
        model="h20-96gb",
        memory_total_bytes=103079215104,
        tpp=2368.0,
        h100e=0.15,
    )
