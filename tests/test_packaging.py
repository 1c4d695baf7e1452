"""What `pip install gpucap` delivers: the built wheel holds every part of the package and the
right metadata, a checkout whose symlinks did not survive stops the build, and a node agent works
with only the core dependencies installed (the ledger's web and database stack blocked)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from email.message import Message
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from prometheus_client.parser import text_string_to_metric_families

from gpucap.agent.fake_machine import FakeMachine
from gpucap.agent.inventory import build_inventory
from gpucap.agent.nvml_fake import FakeBackend
from gpucap.agent.scenario import load_scenario
from gpucap.cli import LEDGER_EXTRA_MODULES
from gpucap.core.catalogue import default_catalogue
from tests.conftest import unavailable
from tests.ledger.support import free_port

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LINKED = ("agent", "ledger", "exporters")  # gpucap/NAME -> ../NAME in the repository
# The ledger's stack, by distribution: none may be a core dependency of a node agent.
LEDGER_STACK = ("fastapi", "starlette", "sqlalchemy", "sqlmodel", "alembic", "psycopg", "uvicorn")
# A developer's local state, never part of what a build reads.
LOCAL_STATE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", ".hypothesis"
)


def build_wheel(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """`pip wheel` of the tree at `source` into `out`, offline: the build backend comes from this
    environment (the test extra pins setuptools>=77) instead of an isolated download."""
    installed = Version(metadata.version("setuptools"))
    if installed < Version("77"):
        unavailable(f"setuptools {installed} is installed; building gpucap needs >=77 (test extra)")
    offline = ("--no-deps", "--no-build-isolation", "--no-index", "--disable-pip-version-check")
    return subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *offline, "--quiet", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def built_wheel(source: Path, out: Path) -> Path:
    """The one wheel built from `source`; fails the test with pip's output otherwise."""
    result = build_wheel(source, out)
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = sorted(out.glob("gpucap-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _repository_files(folder: str, pattern: str) -> set[str]:
    """Files under ROOT/folder matching `pattern`, as paths relative to ROOT/folder."""
    base = ROOT / folder
    return {
        p.relative_to(base).as_posix()
        for p in base.rglob(pattern)
        if p.is_file() and "__pycache__" not in p.parts
    }


def expected_wheel_files() -> set[str]:
    """What the wheel must hold, read from the repository: every module of every part (the linked
    ones at their package paths), the ledger's migrations, every data file and the marker."""
    files = {f"gpucap/{name}" for name in _repository_files("gpucap", "*.py")}
    for part in LINKED:
        files |= {f"gpucap/{part}/{name}" for name in _repository_files(part, "*.py")}
    files |= {f"gpucap/agent/scenarios/{n}" for n in _repository_files("agent/scenarios", "*")}
    files |= {f"gpucap/ledger/migrations/{n}" for n in _repository_files("ledger/migrations", "*")}
    files |= {f"gpucap/data/{name}" for name in _repository_files("gpucap/data", "*")}
    return files | {"gpucap/py.typed"}


def wheel_metadata(wheel: zipfile.ZipFile) -> Message:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    return Parser().parsestr(wheel.read(name).decode())


def check_wheel(path: Path) -> None:
    """The assertions every built wheel must pass, wherever it was built from."""
    with zipfile.ZipFile(path) as wheel:
        names = set(wheel.namelist())
        missing = expected_wheel_files() - names
        assert not missing, f"the wheel lacks {sorted(missing)}"
        for required in ("gpucap/data/demo/registry.yaml", "gpucap/data/demo/agents.yaml"):
            assert required in names  # what `gpucap demo` reads
        assert "gpucap/ledger/migrations/versions/0001_initial.py" in names
        dist_info = {n.split("/", 1)[0] for n in names if not n.startswith("gpucap/")}
        assert dist_info == {"gpucap-0.1.0.dist-info"}, dist_info  # no stray top-level packages
        assert "gpucap-0.1.0.dist-info/licenses/LICENSE" in names, "no LICENSE in the dist-info"
        license_text = wheel.read("gpucap-0.1.0.dist-info/licenses/LICENSE").decode()
        assert license_text == (ROOT / "LICENSE").read_text()
        meta = wheel_metadata(wheel)
    assert meta["License-Expression"] == "Apache-2.0"
    requirements = [Requirement(r) for r in meta.get_all("Requires-Dist", [])]
    core = sorted(str(r) for r in requirements if r.marker is None)
    assert core == sorted(str(Requirement(r)) for r in PYPROJECT["project"]["dependencies"])
    stack = {canonicalize_name(n) for n in LEDGER_STACK}
    assert not stack & {canonicalize_name(r.name) for r in requirements if r.marker is None}
    assert {"ledger", "test"} <= set(meta.get_all("Provides-Extra", []))
    ledger = sorted(
        str(Requirement(str(r).split(";")[0]))
        for r in requirements
        if r.marker is not None and r.marker.evaluate({"extra": "ledger"})
    )
    declared = PYPROJECT["project"]["optional-dependencies"]["ledger"]
    assert ledger == sorted(str(Requirement(r)) for r in declared)
    assert {"fastapi", "sqlmodel", "alembic", "psycopg", "uvicorn"} <= {
        canonicalize_name(Requirement(r).name) for r in declared
    }


def copy_checkout(dest: Path) -> Path:
    """The repository as a fresh checkout has it (symlinks kept as links), without local state."""
    shutil.copytree(ROOT, dest, symlinks=True, ignore=LOCAL_STATE)
    return dest


@pytest.fixture(scope="module")
def checkout_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("checkout")
    return built_wheel(copy_checkout(tmp / "src"), tmp / "wheels")


def test_the_wheel_from_a_checkout_holds_every_part_and_its_metadata(checkout_wheel: Path) -> None:
    check_wheel(checkout_wheel)


def test_the_sdist_holds_real_folders_and_builds_the_same_wheel(tmp_path: Path) -> None:
    source = copy_checkout(tmp_path / "src")
    hook = "from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    made = subprocess.run(
        [sys.executable, "-c", f"import sys; {hook}", str(tmp_path / "sdist")],
        capture_output=True,
        text=True,
        cwd=source,
        timeout=300,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    with tarfile.open(tmp_path / "sdist" / made.stdout.split()[-1]) as archive:
        assert not [m.name for m in archive.getmembers() if m.issym() or m.islnk()]
        archive.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    check_wheel(built_wheel(unpacked, tmp_path / "wheels"))


def test_no_package_part_is_a_symlink_outside_the_linked_three() -> None:
    links = sorted(
        p.relative_to(ROOT).as_posix() for p in (ROOT / "gpucap").rglob("*") if p.is_symlink()
    )
    assert links == [f"gpucap/{part}" for part in sorted(LINKED)]


def _replace_with_text_file(link: Path) -> None:
    """What `git clone -c core.symlinks=false` leaves: a file holding the link's target."""
    target = str(link.readlink())
    link.unlink()
    link.write_text(target)


def _dangle(link: Path) -> None:
    link.unlink()
    link.symlink_to("../nowhere")


@pytest.mark.parametrize(
    ("part", "breakage", "message"),
    [
        (part, _replace_with_text_file, f"is a {len(part) + 3}-byte file holding '../{part}'")
        for part in LINKED
    ]
    + [
        ("ledger", _dangle, "is a symlink to ../nowhere, which is not a package folder"),
        ("exporters", Path.unlink, "is missing"),
    ],
)
def test_a_broken_layout_stops_the_build_with_one_message(
    tmp_path: Path, part: str, breakage: Callable[[Path], None], message: str
) -> None:
    source = copy_checkout(tmp_path / "src")
    breakage(source / "gpucap" / part)
    result = build_wheel(source, tmp_path / "wheels")
    assert result.returncode != 0
    lines = [ln.strip() for ln in (result.stdout + result.stderr).splitlines()]
    ours = [ln for ln in lines if ln.startswith("gpucap build: ")]
    assert len(ours) == 1, lines
    assert ours[0].startswith(f"gpucap build: gpucap/{part} {message}"), ours[0]
    assert not list((tmp_path / "wheels").glob("*.whl"))


# A node agent's installation: the distributions `pip install gpucap` brings in.


def _core_closure() -> set[str]:
    """Canonical names of gpucap and every distribution its unconditional requirements pull in,
    read from this environment's metadata."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    seen.add("gpucap")
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: the agent's commands below then fail on it
        for line in requires:
            sub = Requirement(line)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
    return seen


def modules_outside_the_agent_install() -> set[str]:
    """Top-level modules of installed distributions that `pip install gpucap` would not install."""
    core = _core_closure()
    owners = metadata.packages_distributions()
    return {
        module
        for module, dists in owners.items()
        if module.isidentifier() and not {canonicalize_name(d) for d in dists} & core
    }


BLOCKER = """\
import sys

BLOCKED = frozenset({blocked})


class _NotInstalled:
    \"\"\"Imports of modules a `pip install gpucap` would not have fail as if absent.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""


@pytest.fixture(scope="module")
def agent_only_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose Python sees only what `pip install gpucap` installs."""
    blocked = modules_outside_the_agent_install()
    assert {m for m in LEDGER_STACK if _installed(m)} <= blocked
    folder = tmp_path_factory.mktemp("agent-only")
    (folder / "sitecustomize.py").write_text(BLOCKER.format(blocked=json.dumps(sorted(blocked))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUCAP_")}
    env["PYTHONPATH"] = str(folder)
    return env


def _installed(module: str) -> bool:
    return module in metadata.packages_distributions()


def _gpucap(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpucap", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_the_blocker_blocks_the_ledger_stack(agent_only_env: dict[str, str]) -> None:
    probe = "import sqlalchemy"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=agent_only_env,
        check=False,
    )
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'sqlalchemy'" in result.stderr


def test_help_and_evaluate_need_no_ledger_stack(agent_only_env: dict[str, str]) -> None:
    helped = _gpucap(agent_only_env, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "ledger" in helped.stdout
    assert "agent" in helped.stdout
    args = ("evaluate", "gpucap/data/examples/fleet.yaml", "--as-of", "2026-06-30", "--format")
    alone = _gpucap(agent_only_env, *args, "json")
    full = subprocess.run(
        [sys.executable, "-m", "gpucap", *args, "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert alone.stderr == ""
    assert (alone.returncode, json.loads(alone.stdout)) == (
        full.returncode,
        json.loads(full.stdout),
    )
    assert alone.returncode in {0, 1}


def test_agent_inventory_on_a_fake_node(agent_only_env: dict[str, str]) -> None:
    result = _gpucap(agent_only_env, "agent", "inventory", "--fake", "dgx-h100", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert "h100-sxm5-80gb" in result.stdout


def _device_tpp(port: int) -> dict[str, float]:
    """The agent's `gpucap_agent_device_tpp` samples by UUID; empty until it has collected."""
    try:
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.TransportError:
        return {}
    return {
        sample.labels["uuid"]: sample.value
        for family in text_string_to_metric_families(body)
        if family.name == "gpucap_agent_device_tpp"
        for sample in family.samples
    }


def _spooled(spool: Path) -> list[Path]:
    reports = spool / "reports"
    return sorted(reports.iterdir()) if reports.is_dir() else []


# A fake node reporting every 0.2 s to a ledger that is never there.
AGENT_FLAGS = (
    *("--ledger", "http://127.0.0.1:1", "--node-id", "node-1", "--site", "site-a"),
    *("--fake", "dgx-h100", "--interval", "0.2", "--retry-initial", "0.05", "--retry-max", "0.3"),
)


@pytest.fixture
def running_agent(
    agent_only_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], Path, int]]:
    """`gpucap agent run` on a fake node, its ledger unreachable (reports wait in the spool)."""
    port = free_port()
    spool = tmp_path / "spool"
    env = {**agent_only_env, "GPUCAP_TOKEN": "t0k"}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "gpucap", "agent", "run", *AGENT_FLAGS),
            *("--spool", str(spool), "--metrics-port", str(port), "--metrics-host", "127.0.0.1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        yield proc, spool, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_agent_run_collects_spools_and_serves_metrics(
    running_agent: tuple[subprocess.Popen[str], Path, int],
) -> None:
    proc, spool, port = running_agent
    machine = FakeMachine(load_scenario("dgx-h100"))
    inventory = build_inventory(FakeBackend(machine).read(), default_catalogue())
    expected = {d.uuid: float(d.tpp or 0) for d in inventory.devices}
    assert expected
    deadline = time.monotonic() + 60
    served: dict[str, float] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        served = _device_tpp(port)
        if _spooled(spool) and served:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate(timeout=30)[1]
    assert _spooled(spool), "no report reached the spool"
    assert served == expected
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_a_client_command_reports_an_unreachable_ledger(agent_only_env: dict[str, str]) -> None:
    env = {**agent_only_env, "GPUCAP_TOKEN": "t0k"}
    result = _gpucap(env, "headroom", "--ledger", "http://127.0.0.1:1")
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        "gpucap: error: ledger: cannot reach http://127.0.0.1:1: [Errno 111] Connection refused"
    ]


@pytest.mark.parametrize(
    "args",
    [
        ("ledger", "serve", "--db", "sqlite:///{tmp}/l.db"),
        ("ledger", "migrate", "--db", "sqlite:///{tmp}/l.db"),
    ],
)
def test_a_ledger_command_names_the_extra_to_install(
    agent_only_env: dict[str, str], tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = _gpucap(agent_only_env, *(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 3
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gpucap: error: ")
    assert lines[0].endswith(
        "not installed; this command needs the ledger's dependencies: pip install 'gpucap[ledger]'"
    )
    assert not (tmp_path / "l.db").exists()


def _third_party_imports(folder: Path) -> set[str]:
    """Top-level modules imported anywhere under `folder`, less the standard library and gpucap."""
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return found - set(sys.stdlib_module_names) - {"gpucap", "__future__"}


def test_the_install_hint_covers_every_ledger_import_outside_the_core() -> None:
    outside = modules_outside_the_agent_install()
    needed = {m for m in _third_party_imports(ROOT / "ledger") if m in outside}
    assert needed, "the ledger imports nothing outside the core; the extra is pointless"
    assert needed <= LEDGER_EXTRA_MODULES, needed - LEDGER_EXTRA_MODULES
    installed = {m for m in LEDGER_EXTRA_MODULES if _installed(m)}
    assert installed <= outside, installed - outside


def test_the_agent_and_exporters_import_nothing_from_the_ledger_extra() -> None:
    for part in ("agent", "exporters", "gpucap/core"):
        assert not _third_party_imports(ROOT / part) & LEDGER_EXTRA_MODULES, part
