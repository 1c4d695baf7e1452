"""The reporting daemon: collect on a schedule, spool, send in order, never lose a report.

One thread runs the loop; each pass does one step (a collection, or one send) and then waits
for whichever is due next. SIGTERM sets `stop` and wakes the wait, so the current step
finishes and the loop ends; SIGHUP sets `reload`, handled between steps.

A failing spool (full disk, I/O error) fails only the step that met it: it is logged once per
distinct reason until it recovers, counted, sends back off as for an unreachable ledger, and
collection goes on. It has recovered, in one log line, when every kind of step that failed has
succeeded since: a collection that stores its report (a write proves the directory works for
reading too), or a send that failed on the spool sending again. A send alone never ends a
failing store: on a full disk reads and deletes still work, and counting them as recovery
made the log alternate between the error and the recovery at every step.

Delivery that recovers after failed attempts is one line too, with how many and how long.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gpucap import __version__
from gpucap.agent.backend import NvmlBackend
from gpucap.agent.clock import Clock
from gpucap.agent.config import AgentConfig
from gpucap.agent.errors import SpoolError
from gpucap.agent.inventory import Inventory, build_inventory, reconcile
from gpucap.agent.ledger_client import ACK, REJECT, LedgerClient, SendResult
from gpucap.agent.model import DeviceReading, NodeReading
from gpucap.agent.report import build_report, fingerprint
from gpucap.agent.spool import Spool
from gpucap.core.catalogue import Catalogue
from gpucap.exporters.snapshots import AgentSnapshot, DeviceSample

log = logging.getLogger("gpucap.agent")

AGENT_VERSION = __version__


class Sender:
    """What the daemon needs from a ledger client (LedgerClient, or a test double)."""

    def send(self, report: dict[str, object]) -> SendResult:  # pragma: no cover - protocol
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - protocol
        raise NotImplementedError


def backoff_seconds(failures: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: half the delay fixed, half random."""
    delay = min(maximum, initial * 2.0 ** max(failures - 1, 0))
    return delay / 2 + rng.uniform(0, delay / 2)


def snapshot_of(
    config: AgentConfig, inventory: Inventory | None, nvml_up: bool, stats: DaemonStats
) -> AgentSnapshot:
    """The agent's metrics as plain values; a scrape reads this, never NVML."""
    devices: tuple[DeviceSample, ...] = ()
    tpp = h100e = 0.0
    if inventory is not None:
        devices = tuple(
            DeviceSample(
                uuid=d.uuid,
                model=d.model,
                pci_device_id=f"0x{(d.reading.pci_device_id or 0):04x}",
                name=d.reading.name or "",
                driver_version=inventory.driver_version or "",
                state=d.state,
                tpp=None if d.tpp is None else float(d.tpp),
                eccn_class=d.eccn,
            )
            for d in inventory.devices
        )
        tpp, h100e = float(inventory.totals.tpp), float(inventory.totals.h100e)
    return AgentSnapshot(
        node_id=config.node_id,
        site_id=config.site,
        agent_version=AGENT_VERSION,
        nvml_up=nvml_up,
        devices=devices,
        node_tpp=tpp,
        node_h100e=h100e,
        collect_duration_seconds=stats.collect_duration_seconds,
        last_report_success_timestamp_seconds=stats.last_success_timestamp_seconds,
        report_failures_total=stats.failures_total,
        spool_reports=stats.spool_reports,
        spool_errors_total=stats.spool_errors_total,
    )


@dataclass
class DaemonStats:
    collect_duration_seconds: float = 0.0
    last_success_timestamp_seconds: float | None = None
    failures_total: int = 0
    spool_reports: int = 0
    spool_errors_total: int = 0  # spool steps (store, read, remove) that failed with an I/O error
    sent: list[int] = field(default_factory=list)


class Daemon:
    """Collect, spool and send until `stop` is set."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        backend: NvmlBackend,
        spool: Spool,
        sender_factory: Callable[[AgentConfig], Sender | LedgerClient],
        catalogue: Catalogue,
        clock: Clock,
        publish: Callable[[AgentSnapshot], None] = lambda _s: None,
        reload_config: Callable[[AgentConfig], AgentConfig] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.spool = spool
        self._sender_factory = sender_factory
        self.sender = sender_factory(config)
        self.catalogue = catalogue
        self.clock = clock
        self.publish = publish
        self._reload_config = reload_config
        self.rng = rng or random.Random()  # noqa: S311 (backoff jitter, not security)
        self.stats = DaemonStats(spool_reports=spool.count())
        self.stop = False
        self.reload = False
        self._previous: tuple[DeviceReading, ...] = ()
        self._inventory: Inventory | None = None
        self._nvml_up = False
        self._last_reason: str | None = ""
        self._failures = 0  # consecutive failed sends, for the backoff (reset by a reload)
        self._undelivered = 0  # failed attempts since the last delivery, for its recovery line
        self._undelivered_since = 0.0  # monotonic time of the first of them
        self._spool_failing: dict[str, str] = {}  # "store"/"send" -> error, until it works
        self._spool_logged: set[str] = set()  # the errors logged since the spool last worked
        self._spool_errors = 0  # failed spool steps since the spool last worked
        self._spool_failures = 0  # consecutive sends failed by the spool, for their backoff
        self._retry_at = 0.0
        self._next_collect = clock.monotonic()
        self.collections = 0

    # --- signals --------------------------------------------------------------------------
    def request_stop(self) -> None:
        self.stop = True
        self.clock.wake()

    def request_reload(self) -> None:
        self.reload = True
        self.clock.wake()

    # --- the loop ---------------------------------------------------------------------------
    def run(self, max_collections: int | None = None) -> int:
        """Loop until stopped (or `max_collections` for tests); returns the exit code 0."""
        log.info(
            "agent %s started: node %s, site %s, ledger %s, every %g s",
            AGENT_VERSION,
            self.config.node_id,
            self.config.site,
            self.config.ledger,
            self.config.interval_seconds,
        )
        try:
            while not self.stop:
                if self.reload:
                    self._apply_reload()
                now = self.clock.monotonic()
                if now >= self._next_collect:
                    if max_collections is not None and self.collections >= max_collections:
                        break
                    self.collect_once()
                    self._next_collect = max(self._next_collect + self.config.interval_seconds, now)
                    continue
                if self.stats.spool_reports and now >= self._retry_at:
                    self.send_once()
                    continue
                due = self._next_collect
                if self.stats.spool_reports:
                    due = min(due, self._retry_at)
                self.clock.wait(due - now)
        finally:
            self.backend.close()
            self.sender.close()
            log.info("agent stopped; %d report(s) left in the spool", self.stats.spool_reports)
        return 0

    def collect_once(self) -> None:
        """One collection: read NVML, build the inventory and spool a report if NVML is up."""
        started = time.perf_counter()
        reading = self.backend.read()
        self.collections += 1
        self.stats.collect_duration_seconds = time.perf_counter() - started
        self._note_nvml(reading)
        if reading.nvml_up:
            devices = reconcile(reading.devices, self._previous)
            self._previous = devices
            inventory = build_inventory(
                NodeReading(True, reading.driver_version, reading.cuda_driver_version, devices),
                self.catalogue,
                node_id=self.config.node_id,
            )
            self._inventory = inventory
            try:
                self._spool(inventory)
            except SpoolError as exc:
                self._spool_failed("store", exc)
            else:
                self._spool_ok("store")
        self._publish()

    def _note_nvml(self, reading: NodeReading) -> None:
        if reading.nvml_up != self._nvml_up or reading.reason != self._last_reason:
            if reading.nvml_up:
                log.info(
                    "NVML up: driver %s, %d device(s)", reading.driver_version, len(reading.devices)
                )
            else:
                log.error(
                    "NVML unavailable, agent degraded (no reports until it recovers; will retry "
                    "every %g s): %s",
                    self.config.interval_seconds,
                    reading.reason,
                )
        self._nvml_up, self._last_reason = reading.nvml_up, reading.reason

    def _spool(self, inventory: Inventory) -> None:
        seq = self.spool.reserve()
        report = build_report(
            inventory,
            node_id=self.config.node_id,
            site_id=self.config.site,
            seq=seq,
            collected_at=self.clock.now(),
            agent_version=AGENT_VERSION,
        )
        mark = fingerprint(report)
        change = mark != self.spool.last_fingerprint
        if change:
            log.info("inventory changed (report %d): %d device(s)", seq, len(inventory.devices))
        self.spool.put(seq, report, change=change, fingerprint=mark)
        self.stats.spool_reports = self.spool.count()

    def send_once(self) -> None:
        """Send the oldest pending report; reports go strictly in sequence order."""
        try:
            touched = self._send_oldest()
        except SpoolError as exc:
            self._spool_failures += 1
            self._spool_failed("send", exc)
            delay = backoff_seconds(
                self._spool_failures,
                self.config.retry_initial_seconds,
                self.config.retry_max_seconds,
                self.rng,
            )
            self._retry_at = self.clock.monotonic() + delay
        else:
            if touched:
                self._spool_failures = 0
                self._spool_ok("send")
        self._publish()

    def _send_oldest(self) -> bool:
        """One send; False when the spool had nothing to send (no spool I/O was done)."""
        item = self.spool.oldest()
        self.stats.spool_reports = self.spool.count()
        if item is None:
            return False
        result = self.sender.send(item.report)
        if result.outcome == ACK:
            self._delivered()
            self._failures = 0
            self._retry_at = 0.0
            self.stats.last_success_timestamp_seconds = self.clock.now().timestamp()
            self.stats.sent.append(item.seq)
            log.debug("report %d acknowledged: %s", item.seq, result.reason)
            self.spool.acknowledge(item)  # if this fails, the resend is answered `duplicate`
        elif result.outcome == REJECT:
            self.stats.failures_total += 1
            log.error("ledger rejected report %d, quarantined: %s", item.seq, result.reason)
            self.spool.quarantine(item, result.reason)
        else:
            self.stats.failures_total += 1
            self._failures += 1
            if not self._undelivered:
                self._undelivered_since = self.clock.monotonic()
            self._undelivered += 1
            delay = backoff_seconds(
                self._failures,
                self.config.retry_initial_seconds,
                self.config.retry_max_seconds,
                self.rng,
            )
            self._retry_at = self.clock.monotonic() + delay
            log.warning(
                "report %d not delivered (%s); retry %d in %.2f s, %d pending",
                item.seq,
                result.reason,
                self._failures,
                delay,
                self.stats.spool_reports,
            )
        self.stats.spool_reports = self.spool.count()
        return True

    def _delivered(self) -> None:
        """A report was acknowledged: one line if attempts had failed before it."""
        if not self._undelivered:
            return
        log.info(
            "delivery recovered after %d failed attempt(s) over %.1f s; %d report(s) still spooled",
            self._undelivered,
            self.clock.monotonic() - self._undelivered_since,
            max(self.spool.count() - 1, 0),  # this one leaves the spool next
            extra={"failed_attempts": self._undelivered},
        )
        self._undelivered = 0

    def _spool_failed(self, step: str, exc: SpoolError) -> None:
        """`step` ("store" or "send") met a spool error: counted always, logged once per
        distinct error until the spool works again."""
        self.stats.spool_errors_total += 1
        self._spool_errors += 1
        self._spool_failing[step] = str(exc)
        if str(exc) not in self._spool_logged:
            self._spool_logged.add(str(exc))
            log.error(
                "spool failing (collection and delivery go on, retried): %s",
                exc,
                extra={"path": exc.path},
            )

    def _spool_ok(self, step: str) -> None:
        """`step` worked: a store clears every failure (it wrote), a send only its own."""
        if step == "store":
            self._spool_failing.clear()
        else:
            self._spool_failing.pop("send", None)
        if self._spool_failing or not self._spool_logged:
            return
        log.info(
            "spool working again after %d failed step(s): %s",
            self._spool_errors,
            "; ".join(sorted(self._spool_logged)),
        )
        self._spool_logged.clear()
        self._spool_errors = 0

    def _publish(self) -> None:
        self.publish(snapshot_of(self.config, self._inventory, self._nvml_up, self.stats))

    def _apply_reload(self) -> None:
        self.reload = False
        if self._reload_config is None:
            return
        try:
            fresh = self._reload_config(self.config)
        except Exception as exc:
            log.error("configuration reload failed, keeping the current one: %s", exc)
            return
        applied, restart = self.config.reloadable_diff(fresh)
        for name in restart:
            log.warning(
                "configuration: %s changed but needs a restart; keeping the old value", name
            )
            fresh = _keep(fresh, self.config, name)
        if applied:
            log.info("configuration reloaded: %s", ", ".join(applied))
            if {"ledger", "token", "ledger_timeout_seconds"} & set(applied):
                self.sender.close()
                self.sender = self._sender_factory(fresh)
            self._retry_at = 0.0
            self._failures = 0
            logging.getLogger("gpucap").setLevel(fresh.log_level)
        else:
            log.info("configuration reloaded: nothing changed")
        self.config = fresh


def _keep(fresh: AgentConfig, old: AgentConfig, name: str) -> AgentConfig:
    from dataclasses import replace

    return replace(fresh, **{name: getattr(old, name)})
