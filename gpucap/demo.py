"""`gpucap demo`: a ledger and several agents on fake nodes, wired together on loopback.

The stack runs the real commands (`gpucap ledger serve`, `gpucap agent run`) as child processes,
so the demo shows exactly what an operator would run. `DemoStack` is also what the end-to-end
tests use to bring the system up.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from gpucap.core.data import shipped
from gpucap.core.errors import GpucapError, InputError


class DemoError(GpucapError):
    """A part of the demo stack did not start or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Child:
    """One child process of the stack and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    url: str


@dataclass(frozen=True)
class AgentSpec:
    node: str
    site: str
    fake: str


def read_agents(path: Path) -> list[AgentSpec]:
    """The agents file of a demo fleet: `agents: [{node, site, fake}]`."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    rows = doc.get("agents") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not rows:
        raise InputError(f"{path.name}.agents", "expected a non-empty list")
    specs = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not all(
            isinstance(row.get(k), str) for k in AgentSpec.__annotations__
        ):
            raise InputError(f"{path.name}.agents[{i}]", "expected {node, site, fake} strings")
        specs.append(AgentSpec(row["node"], row["site"], row["fake"]))
    return specs


@dataclass
class DemoStack:
    """A ledger on a SQLite file plus one agent per entry of `agents.yaml`, all on loopback."""

    state_dir: Path
    fleet_dir: Path
    interval_s: float = 2.0
    host: str = "127.0.0.1"
    ledger_port: int = 0
    children: dict[str, Child] = field(default_factory=dict)
    operator_token: str = ""
    agents: list[AgentSpec] = field(default_factory=list)
    # The ledger's metrics need a bearer token, as in a real deployment (docs/deploy.md).
    metrics_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.state_dir / 'ledger.db'}"

    @property
    def ledger_url(self) -> str:
        return self.children["ledger"].url

    def _gpucap(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gpucap", *args]

    def _run(self, *args: str) -> str:
        """Run one gpucap command to completion; its stdout, or DemoError with its stderr."""
        proc = subprocess.run(  # noqa: S603 (our own CLI, fixed arguments)
            self._gpucap(*args), capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise DemoError("demo", f"`gpucap {' '.join(args[:2])}` failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def _spawn(self, name: str, url: str, *args: str, env: dict[str, str] | None = None) -> Child:
        log = self.state_dir / "logs" / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(  # noqa: S603 (our own CLI, fixed arguments)
                self._gpucap(*args),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        child = Child(name, process, log, url)
        self.children[name] = child
        return child

    def start(self) -> None:
        """Fresh state, migrate, start the ledger, mint tokens, start every agent."""
        shutil.rmtree(self.state_dir, ignore_errors=True)
        (self.state_dir / "logs").mkdir(parents=True)
        registry = self.fleet_dir / "registry.yaml"
        self.agents = read_agents(self.fleet_dir / "agents.yaml")
        self._run("ledger", "migrate", "--db", self.db_url)
        port = self.ledger_port or free_port(self.host)
        url = f"http://{self.host}:{port}"
        self._spawn(
            "ledger",
            url,
            "ledger", "serve", "--registry", str(registry), "--db", self.db_url,
            "--host", self.host, "--port", str(port),
            env={
                "GPUCAP_REPORT_INTERVAL_S": str(self.interval_s),
                "GPUCAP_METRICS_TOKEN": self.metrics_token,
            },
        )  # fmt: skip
        self._wait(f"{url}/readyz", "ledger", timeout_s=60)
        self.operator_token = self._run(
            "ledger", "token", "--db", self.db_url, "--operator", "demo"
        )
        for spec in self.agents:
            self.start_agent(spec)

    def start_agent(self, spec: AgentSpec) -> Child:
        token = self._run(
            "ledger", "token", "--db", self.db_url, "--node", spec.node, "--site", spec.site
        )
        port = free_port(self.host)
        child = self._spawn(
            f"agent-{spec.node}",
            f"http://{self.host}:{port}/metrics",
            "agent", "run", "--ledger", self.ledger_url, "--node-id", spec.node,
            "--site", spec.site, "--fake", spec.fake, "--interval", str(self.interval_s),
            "--spool", str(self.state_dir / "spool" / spec.node),
            "--metrics-port", str(port), "--metrics-host", self.host,
            env={"GPUCAP_TOKEN": token},
        )  # fmt: skip
        self._wait(child.url, child.name, timeout_s=30)
        return child

    def stop(self, name: str) -> None:
        """Stop one child with SIGTERM (then SIGKILL if it lingers)."""
        child = self.children.pop(name, None)
        if child is None:
            return
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
            try:
                child.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()

    def close(self) -> None:
        for name in [n for n in self.children if n != "ledger"] + ["ledger"]:
            self.stop(name)

    def _wait(self, url: str, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        child = self.children[name]
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                tail = child.log.read_text(errors="replace")[-2000:]
                raise DemoError(name, f"exited with {child.process.returncode}:\n{tail}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise DemoError(name, f"not ready at {url} after {timeout_s:.0f} s (log: {child.log})")

    def operator(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.operator_token}"}
        return httpx.Client(base_url=self.ledger_url, headers=headers, timeout=10)

    def wait_for_reports(self, timeout_s: float = 60) -> None:
        """Until every agent's site shows observed devices in the ledger."""
        wanted = {spec.site for spec in self.agents}
        deadline = time.monotonic() + timeout_s
        with self.operator() as client:
            while time.monotonic() < deadline:
                sites = client.get("/v1/inventory").json().get("sites", [])
                if wanted <= {s["site"] for s in sites if s["devices"] > 0}:
                    return
                time.sleep(0.3)
        raise DemoError("demo", f"agents did not report within {timeout_s:.0f} s")

    def headroom(self) -> dict[str, Any]:
        with self.operator() as client:
            response = client.get("/v1/headroom")
            response.raise_for_status()
            answer: dict[str, Any] = response.json()
            return answer


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run a ledger and agents on fake nodes, print headroom and metrics URLs",
        description="Runs until Ctrl-C; --once prints the results and exits.",
    )
    demo.add_argument("--once", action="store_true", help="print the results and exit")
    demo.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".gpucap-demo"),
        help="working directory for the database, spools and logs (recreated)",
    )
    demo.add_argument(
        "--fleet",
        type=Path,
        default=None,
        help="folder with registry.yaml and agents.yaml (default: the shipped demo)",
    )
    demo.add_argument("--port", type=int, default=0, help="ledger port (default: a free one)")
    demo.add_argument("--interval", type=float, default=2.0, help="agents' interval, seconds")
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from gpucap.core.report import render_document

    stack = DemoStack(
        state_dir=args.state_dir.resolve(),
        fleet_dir=(args.fleet or shipped("demo")).resolve(),
        interval_s=args.interval,
        ledger_port=args.port,
    )
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        print(f"gpucap demo: state in {stack.state_dir}")
        stack.start()
        stack.wait_for_reports()
        answer = stack.headroom()
        print("\nheadroom in the ledger, registry plus what the agents report:")
        print(render_document(answer))
        print("\nledger:        ", stack.ledger_url, " (API docs at /docs)")
        print("ledger metrics:", f"{stack.ledger_url}/metrics")
        for child in stack.children.values():
            if child.name.startswith("agent-"):
                print(f"{child.name + ' metrics:':15}", child.url)
        print(f"operator token: GPUCAP_TOKEN={stack.operator_token}")
        print(
            f"metrics token:  {stack.metrics_token} (scrape the ledger with Authorization: Bearer)"
        )
        print(
            f"try: GPUCAP_TOKEN=... gpucap headroom --ledger {stack.ledger_url} --scope country:IN"
        )
        if not args.once:
            print("\nserving; Ctrl-C stops the demo")
            while not stop.wait(0.5):
                pass
    except KeyboardInterrupt:
        pass
    finally:
        stack.close()
        signal.signal(signal.SIGTERM, previous)
    return 0
