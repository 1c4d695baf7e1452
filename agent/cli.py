"""`gpucap agent ...`: inventory, record and run. Handlers import what they need lazily."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpucap.agent.config import OPTIONS

if TYPE_CHECKING:
    from gpucap.agent.clock import SystemClock
    from gpucap.agent.config import AgentConfig
    from gpucap.agent.spool import Spool


def register(subparsers: Any) -> None:
    agent = subparsers.add_parser("agent", help="the node agent: inventory, record, run")
    commands = agent.add_subparsers(dest="agent_command", metavar="COMMAND", required=True)

    inventory = commands.add_parser("inventory", help="print this node's accelerators once")
    inventory.add_argument("--fake", metavar="SCENARIO", help="a fake-NVML scenario name or file")
    inventory.add_argument("--format", choices=("table", "json"), default="table")
    inventory.add_argument("--nvml-timeout", type=float, default=10.0, metavar="SECONDS")
    inventory.set_defaults(func=_inventory)

    record = commands.add_parser(
        "record", help="write what NVML reports as an anonymised fake-NVML scenario file"
    )
    record.add_argument("--output", required=True, type=Path, metavar="FILE")
    record.add_argument("--fake", metavar="SCENARIO", help="record a fake scenario instead")
    record.add_argument("--description", default=None)
    record.set_defaults(func=_record)

    run = commands.add_parser("run", help="run the reporting daemon")
    for name, flag, var, default, _, _, meaning in OPTIONS:
        shown = f" (default {default})" if default is not None else ""
        run.add_argument(flag, dest=name, default=None, help=f"{meaning}; env {var}{shown}")
    run.add_argument(
        "--config",
        dest="config_file",
        type=Path,
        default=None,
        help="GPUCAP_* KEY=VALUE file, re-read on SIGHUP; env GPUCAP_CONFIG",
    )
    run.set_defaults(func=_run)


def _read_once(fake: str | None, timeout_seconds: float) -> Any:
    from gpucap.agent.backend import open_backend

    backend = open_backend(fake, timeout_seconds=timeout_seconds)
    try:
        return backend.read()
    finally:
        backend.close()


def _inventory(args: argparse.Namespace) -> int:
    from gpucap.agent.inventory import build_inventory, inventory_json
    from gpucap.core.catalogue import default_catalogue

    reading = _read_once(args.fake, args.nvml_timeout)
    hostname = socket.gethostname()
    inventory = build_inventory(reading, default_catalogue(), node_id=hostname)
    node = {
        "hostname": hostname,
        "source": f"fake:{args.fake}" if args.fake else "nvml",
    }
    doc = inventory_json(inventory, node)
    if args.format == "json":
        print(json.dumps(doc, indent=2))
    else:
        _print_table(doc)
    if not reading.nvml_up:
        print(f"gpucap: warning: NVML unavailable: {reading.reason}", file=sys.stderr)
        return 3
    return 0


_PIPED_WIDTH = 1000  # columns for table output that does not go to a terminal


def _print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    node = doc["node"]
    table = Table(title=f"{node['hostname']}  driver {node['driver_version'] or '-'}")
    for column in ("#", "UUID", "Name", "PCI id", "Model", "TPP", "H100e", "ECCN", "State", "MIG"):
        table.add_column(column)
    for d in doc["devices"]:
        mig = ", ".join(f"{m['index']}:GI{m['gpu_instance_id']}" for m in d["mig"]) or (
            "off" if d["mig_enabled"] is False else "-" if d["mig_enabled"] is None else "on"
        )
        model = d["model"] or "[bold red]unknown[/]"
        table.add_row(
            str(d["index"]),
            d["uuid"],
            d["name"] or "-",
            d["pci_device_id"] or "-",
            model,
            "-" if d["tpp"] is None else str(d["tpp"]),
            "-" if d["h100e"] is None else f"{d['h100e']:.3f}",
            d["eccn"] or "-",
            d["state"],
            mig,
        )
    totals = doc["totals"]
    console = Console()
    if not console.is_terminal:
        # Piped or redirected, rich assumes 80 columns and would cut UUIDs ("GPU-f…"); a wide
        # console lets the table take its natural width (it never pads beyond it).
        console = Console(width=_PIPED_WIDTH)
    console.print(table)
    console.print(
        f"total TPP {totals['tpp']}, {totals['h100e']:.3f} H100e, "
        f"{totals['advanced_devices']} advanced (3A090) device(s)"
    )


def _record(args: argparse.Namespace) -> int:
    import yaml

    from gpucap.agent.errors import AgentError
    from gpucap.agent.record import scenario_from_reading
    from gpucap.agent.spool import atomic_write

    reading = _read_once(args.fake, 10.0)
    if not reading.nvml_up and args.fake is None:
        raise AgentError("nvml", f"cannot record, NVML unavailable: {reading.reason}")
    source = f"fake scenario {args.fake}" if args.fake else f"host {socket.gethostname()}"
    description = args.description or f"recorded from {source} (anonymised)"
    doc = scenario_from_reading(reading, description)
    text = "# Recorded by `gpucap agent record`; UUIDs and serials anonymised.\n" + yaml.safe_dump(
        doc, sort_keys=False, width=100
    )
    try:
        atomic_write(args.output, text.encode())
    except OSError as exc:
        raise AgentError(str(args.output), f"cannot write: {exc.strerror or exc}") from exc
    print(f"recorded {len(reading.devices)} device(s) to {args.output}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from gpucap.agent.clock import SystemClock
    from gpucap.agent.config import load_config
    from gpucap.agent.spool import Spool, lock_spool
    from gpucap.core import logsetup

    flags = {name: getattr(args, name) for name, *_ in OPTIONS}
    # The configuration names the log format, and reading it may log (an unknown key): hold
    # those lines until the format is known, and write them in it (in text if it is invalid).
    held = logsetup.hold()
    try:
        config = load_config(flags, config_file=args.config_file)
    except BaseException:
        logsetup.release(held, "text")
        raise
    logsetup.release(held, config.log_format, config.log_level)
    lock = lock_spool(config.spool)  # SpoolError, exit 3, if another agent uses this spool
    try:
        clock = SystemClock()
        spool = Spool(config.spool, config.spool_max_reports, clock=clock)
        return _serve(args, flags, config, spool, clock)
    finally:
        os.close(lock)


def _serve(
    args: argparse.Namespace,
    flags: dict[str, str | None],
    config: AgentConfig,
    spool: Spool,
    clock: SystemClock,
) -> int:
    """Run the daemon (and the metrics server) until SIGTERM; the spool is already locked."""
    from gpucap.agent.backend import open_backend
    from gpucap.agent.config import load_config
    from gpucap.agent.daemon import Daemon
    from gpucap.agent.ledger_client import LedgerClient
    from gpucap.agent.metrics import MetricsBox, start_metrics
    from gpucap.core.catalogue import default_catalogue

    backend = open_backend(config.fake, timeout_seconds=config.nvml_timeout_seconds)

    def sender(cfg: AgentConfig) -> LedgerClient:
        from gpucap.core.credfiles import client_context

        return LedgerClient(
            cfg.ledger,
            cfg.token,
            timeout_seconds=cfg.ledger_timeout_seconds,
            agent_version=__import__("gpucap").__version__,
            verify=True if cfg.ca_file is None else client_context(cfg.ca_file, "--ca-file"),
        )

    box = MetricsBox()
    daemon = Daemon(
        config,
        backend=backend,
        spool=spool,
        sender_factory=sender,
        catalogue=default_catalogue(),
        clock=clock,
        publish=box.set,
        reload_config=lambda _old: load_config(flags, config_file=args.config_file),
    )
    server = None
    if config.metrics_port is not None:
        box.set_initial(config)
        server = start_metrics(config.metrics_port, config.metrics_host, box.get)
    signal.signal(signal.SIGTERM, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())
    if flags.get("token") is not None:  # once running: an error before stays one line
        import logging

        logging.getLogger("gpucap.agent").warning(
            "--token shows the token to every user of this machine (ps): use --token-file"
        )
    try:
        return daemon.run()
    finally:
        if server is not None:
            server.close()
