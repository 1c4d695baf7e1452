"""`gpucap demo`: a ledger and several agents on fake nodes, wired together on loopback.

The stack runs the real commands (`gpucap ledger serve`, `gpucap agent run`) as child processes,
so the demo shows exactly what an operator would run. `DemoStack` is also what the end-to-end
tests use to bring the system up.

Before anything starts, the fleet is read and validated (bad input: exit 2 naming the flag or
field) and every port the stack will listen on is bound once to prove it free (one in use: exit
3 naming it), so that no agent ever reports to whatever else holds a port. The state folder is
recreated only when it is empty, missing or marked by MARKER as the demo's own: any other folder
is refused (exit 2), never deleted.
"""

from __future__ import annotations

import argparse
import json
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

from gpucap.core.data import read_yaml, shipped
from gpucap.core.errors import GpucapError, InputError

# The file that marks a folder as a demo's state, which a later demo may delete and recreate.
MARKER = ".gpucap-demo-state"


class DemoError(GpucapError):
    """A part of the demo stack did not start or did not become ready."""


def prepare_state_dir(path: Path, flag: str = "--state-dir") -> None:
    """Make `path` an empty, marked demo folder: a missing or empty folder is created or used,
    a marked one is emptied, anything else is refused (InputError naming `flag`) untouched."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise InputError(flag, f"{path} is not a folder")
    if path.is_dir() and any(path.iterdir()):
        marker = path / MARKER
        if marker.is_symlink() or not marker.is_file():
            raise InputError(
                flag,
                f"{path} is not empty and not a demo folder (no {MARKER}): left as it is; "
                "give an empty or new folder",
            )
        try:
            shutil.rmtree(path)
        except OSError as exc:
            raise DemoError(flag, f"cannot empty the demo folder {path}: {exc}") from None
    try:
        path.mkdir(parents=True, exist_ok=True)
        # The marker first, so that a demo that stops half-way leaves a folder it may reuse.
        (path / MARKER).write_text(
            "gpucap demo state: the next `gpucap demo` deletes this folder\n", encoding="utf-8"
        )
    except OSError as exc:
        raise DemoError(flag, f"cannot create the demo folder {path}: {exc}") from None


def check_fleet(fleet_dir: Path, flag: str = "--fleet") -> None:
    """A fleet folder holds registry.yaml and agents.yaml (InputError naming `flag` if not)."""
    if not fleet_dir.is_dir():
        raise InputError(flag, f"no folder {fleet_dir}")
    for name in ("registry.yaml", "agents.yaml"):
        if not (fleet_dir / name).is_file():
            raise InputError(flag, f"{fleet_dir} has no {name}")


def claim_ports(host: str, wanted: list[int], flags: list[str]) -> list[int]:
    """One port per entry of `wanted` (0: any free one), each bound once now, all at the same
    time so that they differ; a port that cannot be bound is DemoError naming its flag."""
    sockets: list[socket.socket] = []
    try:
        for port, flag in zip(wanted, flags, strict=True):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            if port:  # as the servers bind: a listener refuses it, a closed connection does not
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise DemoError(
                    flag, f"port {port} on {host} is not free ({exc.strerror}): give another one"
                ) from None
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


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
    doc = read_yaml(path, error=InputError) or {}
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
    # Ports `start` proved free for the agents, taken in order (a later agent: a free one).
    _agent_ports: list[int] = field(default_factory=list, repr=False)

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

    def _secret(self, name: str, value: str) -> str:
        """Write a token to a mode-0600 file for a child to read: tokens never go on a command
        line (`ps` shows those to every user) nor into a child's environment."""
        folder = self.state_dir / "secrets"
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(value + "\n")
        return str(path)

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
        """Check the fleet and the ports, then fresh state, migrate, start the ledger, mint
        tokens, start every agent."""
        from gpucap.core.scenario import load_scenario

        check_fleet(self.fleet_dir)
        registry = self.fleet_dir / "registry.yaml"
        try:  # what `ledger serve` would refuse, refused before it starts
            load_scenario(registry)
        except InputError as exc:
            named = exc.path.startswith(registry.name) or not exc.path
            path = (exc.path or registry.name) if named else f"{registry.name}.{exc.path}"
            raise InputError(path, exc.reason) from None
        self.agents = read_agents(self.fleet_dir / "agents.yaml")
        # The ledger serves its metrics on its API port; each agent has a metrics port.
        port, *self._agent_ports = claim_ports(
            self.host,
            [self.ledger_port] + [0] * len(self.agents),
            ["--port"] + [f"agent {a.node} metrics port" for a in self.agents],
        )
        prepare_state_dir(self.state_dir)
        (self.state_dir / "logs").mkdir()
        self._run("ledger", "migrate", "--db", self.db_url)
        url = f"http://{self.host}:{port}"
        self._spawn(
            "ledger",
            url,
            "ledger", "serve", "--registry", str(registry), "--db", self.db_url,
            "--host", self.host, "--port", str(port),
            env={
                "GPUCAP_REPORT_INTERVAL_S": str(self.interval_s),
                "GPUCAP_METRICS_TOKEN_FILE": self._secret("metrics.token", self.metrics_token),
                "GPUCAP_METRICS_TOKEN": "",  # one in the caller's environment would conflict
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
        port = self._agent_ports.pop(0) if self._agent_ports else free_port(self.host)
        child = self._spawn(
            f"agent-{spec.node}",
            f"http://{self.host}:{port}/metrics",
            "agent", "run", "--ledger", self.ledger_url, "--node-id", spec.node,
            "--site", spec.site, "--fake", spec.fake, "--interval", str(self.interval_s),
            "--spool", str(self.state_dir / "spool" / spec.node),
            "--metrics-port", str(port), "--metrics-host", self.host,
            env={"GPUCAP_TOKEN_FILE": self._secret(f"{spec.node}.token", token),
                 "GPUCAP_TOKEN": ""},
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

    def get(self, path: str) -> dict[str, Any]:
        """One operator read of the ledger (`/v1/headroom`, `/v1/licences`, ...)."""
        with self.operator() as client:
            response = client.get(path)
            response.raise_for_status()
            answer: dict[str, Any] = response.json()
            return answer

    def headroom(self) -> dict[str, Any]:
        return self.get("/v1/headroom")


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run a ledger and agents on fake nodes, print headroom",
        description="Runs until Ctrl-C; --once prints the results and exits.",
    )
    demo.add_argument("--once", action="store_true", help="print the results and exit")
    demo.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".gpucap-demo"),
        help=f"folder for the database, spools and logs; recreated when empty or a demo's "
        f"own (marked by {MARKER}), any other folder is refused",
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


def _findings_text(doc: dict[str, Any]) -> str:
    """The reconciliation findings the demo has, one line per kind and item (at most 5 each)."""
    lines = ["\nreconciliation findings (GET /v1/reconciliation):"]
    for kind, count in doc["counts"].items():
        if count:
            lines.append(f"  {kind}: {count}")
            lines += [f"    {json.dumps(i, sort_keys=True)}" for i in doc["findings"][kind][:5]]
    if len(lines) == 1:
        lines.append("  none")
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    from gpucap.core.report import render_document
    from gpucap.ledger import licences

    if not 0 <= args.port <= 65535:
        raise InputError("--port", f"expected 0 (a free port) to 65535, got {args.port}")
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
        print("licences (gpucap licences), used against limit and shipped against observed:")
        print(licences.render(stack.get("/v1/licences"), "table"), end="")
        print(_findings_text(stack.get("/v1/reconciliation")))
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
