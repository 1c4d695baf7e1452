"""The ledger as one object per process: the store, caches validated against the database, and
per-process counters. Routes and CLI commands call it; it holds no fact the database lacks.

Caches (registry fleet by digest, evaluations by (as_of, projection_version), revoked token ids
by auth_version) are checked against `ledger_state`, which every write that changes them bumps
in every process, so a second process's write is seen on the next request. Reports go through
one group committer per process (batcher.py); the integrator (integrator.py) signs what was
appended. It is past 400 lines because every use case the routes and commands call is one
short method here, over the modules that do the work.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from gpucap.core.catalogue import Catalogue, default_catalogue
from gpucap.core.data import read_yaml
from gpucap.core.engine import Evaluation, evaluate
from gpucap.core.errors import GpucapError, InputError
from gpucap.core.fleet import Fleet
from gpucap.core.ruleset import RulePack, load_ruleset
from gpucap.core.scenario import fleet_packs
from gpucap.exporters.snapshots import CapSample, LedgerSnapshot, SiteSample
from gpucap.ledger import db, events, heap, ingest, inventory, log, reconcile, tokens
from gpucap.ledger.batcher import GroupCommitter
from gpucap.ledger.errors import AuthError, UnavailableError
from gpucap.ledger.evaluations import Evaluations, View, live_basis
from gpucap.ledger.explainer import explain_answer, pack_of
from gpucap.ledger.ingest import Outcome, Prepared
from gpucap.ledger.integrator import Integrator
from gpucap.ledger.known import KnownAt, PastRecords, ProofCache, provenance, resolve
from gpucap.ledger.linecache import LineSet
from gpucap.ledger.models import Report
from gpucap.ledger.record import record_inventory
from gpucap.ledger.settings import Settings, parse_instant
from gpucap.ledger.store import Store
from gpucap.ledger.views import FleetIndex, parse_request_scope, require_visible

_logger = logging.getLogger("gpucap.ledger")
_PREPARED_NODES = 200_000  # nodes whose last resolved devices are kept (about 2 KiB each)
_VERIFIED_TOKENS = 200_000  # tokens whose signature was checked (revocation is checked always)


def registry_doc(path: Path, catalogue: Catalogue) -> Any:
    """Read and validate a registry file; the document as JSON-ready data (dates as text)."""
    raw = read_yaml(path, error=InputError)  # a file that is not UTF-8 is an InputError too
    doc = json.loads(json.dumps(raw, default=str))
    fleet = ingest.load_registry_doc(doc, path.name, catalogue)
    for pack in fleet_packs(fleet):  # every pack the ledger will evaluate it under
        evaluate(fleet, pack, fleet.as_of or date.today())  # rule-dependent checks (UVEU tier)
    return doc


def serving_policy(ledger: Ledger) -> None:
    """What a long-lived serving process does after start-up (serve, its workers, and the
    benchmark that stands in for them): freeze the start-up heap, and each cached evaluation."""
    ledger.freeze_evaluations = True
    heap.settle_startup()


class Ledger:
    """Everything one ledger process shares between requests."""

    def __init__(self, settings: Settings, store: Store, catalogue: Catalogue | None = None):
        self.settings = settings
        self.store = store
        self.catalogue = catalogue or default_catalogue()
        self.key = tokens.signing_key(store, settings.secret)
        self.revocations = tokens.Revocations(store, settings.revocation_ttl_s)
        self._signer: log.Signer | None = None
        self.integrator = Integrator(
            store,
            lambda: self.signer,
            settings.clock,
            settings.log_integrate_interval_s,
            settings.log_checkpoint_keep_s,
        )
        self._committer: GroupCommitter[Prepared, Outcome] = GroupCommitter(self._write_reports)
        self._prepared: dict[str, Prepared] = {}  # node -> its last report's resolved facts
        self._verified: dict[str, tokens.Principal] = {}  # token -> its principal (HMAC checked)
        self._lock = threading.Lock()
        self._registry: tuple[str, Fleet] | None = None
        self._sites = ingest.SiteCache()
        self._packs: dict[str, RulePack] = {}
        # The cached evaluations by (as_of, projection version), and what makes the next one.
        self.evaluations = Evaluations(store, self.registry, self.pack, self.now)
        # Evaluations of log prefixes, for answers with `known_at`.
        self.past = PastRecords(store, self.catalogue)
        self._proofs = ProofCache()  # roots and consistency proofs the answers name
        # Per-process counters (the Prometheus convention for counters; sum across processes).
        self.reports_total: Counter[str] = Counter()
        self.auth_refusals_total: Counter[str] = Counter()
        # No ruleset until a registry is loaded: empty, and the exporter omits gpucap_ruleset_info.
        self._snapshot = LedgerSnapshot(ruleset_id="", ruleset_status="")
        self._snapshot_key: tuple[int, int, date] | None = None
        self._snapshot_at: datetime | None = None

    # -- registry -------------------------------------------------------------------------
    def load_registry_file(self, path: Path, actor: str = "registry-file") -> bool:
        """Validate and record the registry file; True when it changed the ledger's registry.
        One log line either way, with the digest now recorded (what the next `registry`
        entry names as `previous_digest`), so that an operator can tell what is in force."""
        doc = registry_doc(path, self.catalogue)
        with self.store.read() as conn:
            before = db.registry_digest(conn)
        changed = ingest.set_registry(self.store, doc, str(path), self.now(), actor)
        with self.store.read() as conn:
            digest = db.registry_digest(conn)
        if changed:
            _logger.info(
                "registry %s recorded in the log by %s: digest %s, previous %s",
                path,
                actor,
                digest,
                before or "none",
                extra={"path": str(path), "digest": digest, "previous_digest": before},
            )
            self.integrator.wake()
        else:
            _logger.info(
                "registry %s read by %s: unchanged, digest %s",
                path,
                actor,
                digest,
                extra={"path": str(path), "digest": digest},
            )
        return changed

    def registry(self, conn: Connection) -> Fleet:
        """The registry's Fleet as the database holds it now (read and parsed once per digest:
        the digest alone is read to check the cache)."""
        cached = self._registry
        if cached is not None and cached[0] == db.registry_digest(conn):
            return cached[1]
        row = db.registry(conn)
        if row is None:
            raise UnavailableError("registry", "no registry loaded (serve --registry FILE)")
        fleet = ingest.load_registry_doc(json.loads(row.doc), row.origin, self.catalogue)
        self._registry = (row.digest, fleet)
        return fleet

    def ready(self) -> None:
        """UnavailableError unless the database answers and holds a registry."""
        with self.store.read() as conn:
            self.registry(conn)

    def pack(self, ruleset_id: str) -> RulePack:
        if ruleset_id not in self._packs:
            self._packs[ruleset_id] = load_ruleset(ruleset_id)
        return self._packs[ruleset_id]

    def rulesets(self, ids: Sequence[str]) -> tuple[str, ...] | None:
        """Pack ids a caller names in place of the registry's (None for none), checked:
        InputError naming `ruleset` for an unknown or repeated id."""
        if not ids:
            return None
        for j, pack_id in enumerate(ids):
            if pack_id in ids[:j]:
                raise InputError("ruleset", f"rule pack {pack_id!r} is given twice")
            try:
                self.pack(pack_id)
            except InputError as exc:
                raise InputError("ruleset", exc.reason) from None
        return tuple(ids)

    # -- time -----------------------------------------------------------------------------
    def now(self) -> datetime:
        return self.settings.clock()

    def today(self) -> date:
        return self.now().date()

    @property
    def signer(self) -> log.Signer:
        """The log's signer, read from the database on first use."""
        if self._signer is None:
            settings = self.settings
            self._signer = log.load_signer(self.store, settings.log_origin, settings.log_key_file)
        return self._signer

    def start(self) -> None:
        """What a serving process runs beside its requests: sign what is pending now, then keep
        the log integrated."""
        self.integrator.run_once()
        self.integrator.start()

    def stop(self) -> None:
        """Answer queued reports and sign what they appended (the store stays open)."""
        self._committer.close()
        self.integrator.stop()

    # -- ingest ---------------------------------------------------------------------------
    def submit(self, report: Report) -> Future[Outcome]:
        """Queue a report for the group committer; the Future is answered once it is durable
        (or refused: RejectedError)."""
        # A node's devices rarely change between reports: the facts resolved last time are
        # reused when the reported devices are equal (comparing them costs a sixth of resolving
        # them again); the catalogue is fixed for the process, so the facts would be the same.
        last = self._prepared.get(report.node_id)
        if last is not None and last.report.devices == report.devices:
            prepared = Prepared(report, last.facts, last.digest)
        else:
            try:
                prepared = ingest.prepare(report, self.catalogue)
            except InputError:
                self.count_report("rejected")
                raise
            if len(self._prepared) >= _PREPARED_NODES:
                self._prepared.clear()  # a bound on memory, not a policy: misses are cheap
            self._prepared[report.node_id] = prepared
        return self._committer.submit(prepared)

    def ingest(self, report: Report) -> Outcome:
        """Store one report and wait for the answer."""
        return self.submit(report).result()

    def _write_reports(self, batch: Sequence[Prepared]) -> list[Outcome | GpucapError]:
        results, appended = ingest.ingest_batch(self.store, batch, self.now(), self._sites)
        with self._lock:
            for result in results:
                if isinstance(result, Outcome):
                    self.reports_total[result.status] += 1
                elif isinstance(result, InputError):
                    self.reports_total["rejected"] += 1
                # a database failure is not an answer about the report: the agent retries it
        if appended:
            self.integrator.wake()
        return results

    def count_report(self, status: str) -> None:
        with self._lock:
            self.reports_total[status] += 1

    # -- auth -----------------------------------------------------------------------------
    def authenticate(self, header: str | None, *kinds: str) -> tokens.Principal:
        """The principal of an `Authorization: Bearer` header whose kind is one of `kinds`,
        refusing (and counting) others."""
        try:
            if not header:
                raise AuthError(401, "no_token", "no bearer token")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError(401, "malformed_token", "expected 'Authorization: Bearer TOKEN'")
            principal = self._verified.get(token)
            if principal is None:
                principal = tokens.verify(token.strip(), self.key)
                if len(self._verified) >= _VERIFIED_TOKENS:
                    self._verified.clear()
                self._verified[token] = principal  # the same bytes verify the same way
            if principal.expires_at is not None:  # on every request, cached or not
                tokens.check_expiry(principal, self.now())
            if self.revocations.is_revoked(principal.token_id):
                raise AuthError(401, "revoked", f"token {principal.token_id} was revoked")
            if principal.kind not in kinds:
                raise AuthError(403, "wrong_kind", f"a {principal.kind} token cannot do this")
        except AuthError as exc:
            self.refuse(exc)
            raise
        return principal

    def refuse(self, exc: AuthError) -> None:
        """Count a refusal; the HTTP layer logs it, once, with the client and the route
        (`app.log_refusal`)."""
        with self._lock:
            self.auth_refusals_total[exc.reason] += 1

    def token_id_of(self, header: str | None) -> str | None:
        """The id of an `Authorization: Bearer` header's token when its signature verifies
        (revoked, expired or of the wrong kind included), for a refusal's log line; None for
        a forged or malformed one, whose claimed id anyone could have written."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        principal = self._verified.get(token)
        if principal is None:
            try:
                principal = tokens.verify(token.strip(), self.key)
            except AuthError:
                return None
        return principal.token_id

    # -- headroom -------------------------------------------------------------------------
    def evaluation(self, as_of: date) -> tuple[Evaluation, Fleet]:
        """The first pack's unfiltered evaluation on `as_of` and the fleet it was computed over
        (`view(as_of).evaluations` holds every pack's)."""
        view = self.view(as_of)
        return view.evaluation, view.fleet

    def view(self, as_of: date, rulesets: tuple[str, ...] | None = None) -> View:
        """The evaluation on `as_of` with its index and answers, cached per projection version
        (one small query per call validates the cache against the database), under the
        registry's packs or the checked `rulesets` (`Ledger.rulesets`)."""
        return self.evaluations.view(as_of, rulesets)

    def view_known(
        self, as_of: date, known: KnownAt | None, rulesets: tuple[str, ...] | None = None
    ) -> View:
        """The live view (`known` None), or the evaluation of the log prefix `known` names."""
        if known is None:
            return self.view(as_of, rulesets)
        if known.instant is not None:
            with self.store.read() as conn:
                oldest = log.oldest_pending(conn)
            if oldest is not None and oldest <= known.label():
                self.integrator.run_once()  # entries recorded by then are signed before answering
        with self.store.read() as conn:
            size = resolve(conn, known, self.now())
        view = self.past.view(size, as_of, self.pack, rulesets)
        return replace(view, basis=replace(view.basis, known_at=known.label()))

    def signed_now(self) -> KnownAt:
        """The whole signed log, as a `known_at` (what explain and evidence default to)."""
        with self.store.read() as conn:
            return KnownAt(size=log.tree(conn).size)

    def explain(
        self,
        principal: tokens.Principal,
        rule: str,
        scope: str,
        as_of: date | None = None,
        known: KnownAt | None = None,
        ruleset: str | None = None,
    ) -> dict[str, Any]:
        """One check's contributions, from the record of the signed log (or its prefix), in the
        pack that has the rule (`ruleset`: the pack, when several evaluated packs have it)."""
        as_of = as_of or self.today()
        view = self.view_known(as_of, known or self.signed_now())
        k = pack_of(view.packs, rule, ruleset)
        pack, index = view.packs[k], view.indexes[k]
        with self.past.record(view.basis.log_size) as rec:
            try:
                answer = explain_answer(
                    rec, view.fleet, pack, index, as_of, rule, scope, principal.entity
                )
            except AuthError as exc:
                self.refuse(exc)
                raise
        return {"as_of": as_of.isoformat(), **answer, "provenance": self.provenance(view)}

    def events(self, principal: tokens.Principal, query: events.Query) -> dict[str, Any]:
        """One page of the log's history as `principal` may see it."""
        if principal.entity is not None and query.entity not in (None, principal.entity):
            exc = AuthError(
                403,
                "scope_forbidden",
                f"operator token for {principal.entity!r} may not see entity:{query.entity}",
            )
            self.refuse(exc)
            raise exc
        with self.store.read() as conn:
            sites = ingest.registry_sites(conn) or {}
            return events.events(conn, query, sites, principal.entity)

    def provenance(self, view: View) -> dict[str, Any]:
        """The provenance block of an answer computed from `view`."""
        with self.store.read() as conn:
            states = [ev.ruleset for ev in view.evaluations]
            return provenance(conn, view.basis, states, self.now(), self._proofs)

    @property
    def freeze_evaluations(self) -> bool:
        """Whether each newly cached evaluation is frozen (`serving_policy`; off in tests)."""
        return self.evaluations.freeze

    @freeze_evaluations.setter
    def freeze_evaluations(self, on: bool) -> None:
        self.evaluations.freeze = on

    @property
    def _lineset(self) -> LineSet | None:
        """The newest inventory read (tests compare it with a full read)."""
        return self.evaluations.lineset

    # -- reconciliation -------------------------------------------------------------------
    def reconciliation(self) -> dict[str, Any]:
        """Every finding, as `/v1/reconciliation` answers it and the metrics count it.

        `declared_vs_observed` compares the registry's declared lines (never the observed
        ones, which the evaluation's fleet also holds) with the devices agents report.
        """
        with self.store.read() as conn:
            fleet = self.registry(conn)
            return reconcile.findings(
                conn,
                fleet,
                self.now(),
                self.settings.stale_after_s,
                self.today(),
                [self.pack(p) for p in fleet.packs],
                self.settings.shipment_grace_days,
            )

    def reconciliation_for(self, principal: tokens.Principal) -> dict[str, Any]:
        """The findings `principal` may see (an entity-scoped operator: its own sites')."""
        found = self.reconciliation()
        if principal.entity is None:
            return found
        with self.store.read() as conn:
            fleet = self.registry(conn)
        own = {s.id for s in fleet.sites if s.entity == principal.entity}
        return reconcile.restrict(found, own)

    # -- inventory and nodes --------------------------------------------------------------
    def inventory(
        self,
        principal: tokens.Principal,
        site: str | None,
        as_of: date | None = None,
        known: KnownAt | None = None,
    ) -> dict[str, Any]:
        """Declared and observed inventory (one site's lines and devices), live or as the log
        held it at `known`, with provenance."""
        as_of = as_of or self.today()
        view = self.view_known(as_of, known)
        if site is not None:
            self._require_site(view.index, principal, site)
        entity = principal.entity
        if known is None:
            with self.store.snapshot() as conn:
                registry = self.registry(conn)
                observed = inventory.inventory_view(conn, registry, site, entity)
                basis = live_basis(conn, self.now())
            view = replace(view, basis=basis)
        else:
            with self.past.record(view.basis.log_size) as rec:
                registry = rec.registry_fleet()
                observed = record_inventory(rec, registry, site, entity)
        declared = inventory.declared_view(registry, site, entity, as_of)
        return {"as_of": as_of.isoformat(), **inventory.merge(observed, declared, site)} | {
            "provenance": self.provenance(view)
        }

    def nodes(self, principal: tokens.Principal, site: str | None) -> dict[str, Any]:
        with self.store.read() as conn:
            fleet = self._visible_site(conn, principal, site)
            return inventory.nodes_view(
                conn, fleet, site, principal.entity, self.now(), self.settings.stale_after_s
            )

    def _visible_site(
        self, conn: Connection, principal: tokens.Principal, site: str | None
    ) -> Fleet:
        """The registry, after refusing (and counting) a site the principal may not see."""
        fleet = self.registry(conn)
        if site is not None:
            index = FleetIndex.of(fleet, self.pack(fleet.ruleset).tiers.resolve)
            self._require_site(index, principal, site)
        return fleet

    def _require_site(self, index: FleetIndex, principal: tokens.Principal, site: str) -> None:
        try:
            requested = parse_request_scope(f"site:{site}", index, principal.entity)
            require_visible(requested, principal.entity, index)
        except AuthError as exc:
            self.refuse(exc)
            raise

    # -- metrics --------------------------------------------------------------------------
    def snapshot(self) -> LedgerSnapshot:
        """The latest snapshot with this process's counters (no SQL here: scrape path)."""
        with self._lock:
            return replace(
                self._snapshot,
                reports_total=dict(self.reports_total),
                auth_refusals_total=dict(self.auth_refusals_total),
            )

    def refresh_snapshot(self, force: bool = False) -> bool:
        """Rebuild the SQL-derived part of the snapshot when it may have changed; True if it did.

        It changes when the database moves (log head, projection version), when the date
        changes (checks are as of today), and with time alone: nodes turn stale without any
        write, so a snapshot older than one report interval is rebuilt too.
        """
        state = self.store.state()
        with self.store.read() as conn:
            size = log.tree(conn).size
            oldest = log.oldest_pending(conn)
        now = self.now()
        unsigned = (
            0.0 if oldest is None else max(0.0, (now - parse_instant(oldest)).total_seconds())
        )
        key = (size, state.projection_version, now.date())
        at = self._snapshot_at
        recent = at is not None and (now - at).total_seconds() < self.settings.report_interval_s
        if not force and key == self._snapshot_key and recent:
            with self._lock:  # the log's freshness is cheap and must not wait for a rebuild
                self._snapshot = replace(self._snapshot, log_unsigned_age_s=unsigned)
            return False
        view = self.view(now.date())
        ev = view.evaluation  # the first pack's: its sites' tiers label gpucap_site_tpp
        found = self.reconciliation()
        with self.store.read() as conn:
            nodes = reconcile.node_counts(conn, now, self.settings.stale_after_s)
        snap = LedgerSnapshot(
            ruleset_id=ev.ruleset.id,
            ruleset_status=ev.ruleset.status,
            caps=tuple(
                CapSample(
                    rule=c.rule,
                    scope=c.scope,
                    used_tpp=float(c.used_tpp),
                    headroom_tpp=float(c.headroom_tpp),
                    breached=c.status == "breach",
                    limit_tpp=None if c.limit_tpp is None else float(c.limit_tpp),
                    kind=c.kind,
                    share=None if c.share is None else float(c.share),
                    limit_share=None if c.limit_share is None else float(c.limit_share),
                )
                for each in view.evaluations
                for c in each.checks
            ),
            sites=tuple(
                SiteSample(s.id, s.entity, s.country, str(s.tier), float(s.installed_tpp))
                for s in ev.sites
            ),
            nodes=nodes,
            findings=dict(found["counts"]),
            eventlog_rows=size,
            log_unsigned_age_s=unsigned,
            rulesets=tuple((e.ruleset.id, e.ruleset.status) for e in view.evaluations),
        )
        with self._lock:
            self._snapshot = snap
            self._snapshot_key = key
            self._snapshot_at = now
        return True
