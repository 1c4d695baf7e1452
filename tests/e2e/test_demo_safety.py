"""`gpucap demo` refuses what it must not touch: a folder that is not its own, a port in use, a
fleet that is not there. Each refusal is one line and comes before anything is started or
deleted; a marked demo folder is still emptied and reused."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpucap.core.data import shipped
from gpucap.core.errors import InputError
from gpucap.demo import MARKER, DemoError, check_fleet, claim_ports, prepare_state_dir


def demo(*flags: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpucap", "demo", "--once", *flags],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture
def listener() -> Iterator[int]:
    """A port something else listens on, as a stranger's server would."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


# -- the state folder --------------------------------------------------------------------------
def test_a_folder_that_is_not_a_demo_folder_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "thesis.tex").write_text("years of work\n")
    proc = demo("--state-dir", str(home))
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert line.startswith("gpucap: error: --state-dir: ")
    assert "not a demo folder" in line
    assert sorted(p.name for p in home.iterdir()) == ["notes", "thesis.tex"]
    assert (home / "thesis.tex").read_text() == "years of work\n"


def test_a_marked_folder_is_emptied_and_marked_again(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True)
    (state / MARKER).write_text("gpucap demo state\n")
    (state / "logs" / "ledger.log").write_text("an old run\n")
    (state / "ledger.db").write_text("old")
    prepare_state_dir(state)
    assert [p.name for p in state.iterdir()] == [MARKER]


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_a_missing_or_empty_folder_is_used_and_marked(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "a" / "b"
    if kind == "empty":
        state.mkdir(parents=True)
    prepare_state_dir(state)
    assert [p.name for p in state.iterdir()] == [MARKER]


def test_what_only_looks_like_a_marker_is_no_marker(tmp_path: Path) -> None:
    as_folder = tmp_path / "folder"
    (as_folder / MARKER).mkdir(parents=True)
    (tmp_path / "elsewhere").write_text("x")
    as_link = tmp_path / "link"
    as_link.mkdir()
    (as_link / MARKER).symlink_to(tmp_path / "elsewhere")
    for state in (as_folder, as_link):
        with pytest.raises(InputError) as err:
            prepare_state_dir(state)
        assert err.value.path == "--state-dir"
        assert (state / MARKER).exists()
    assert (tmp_path / "elsewhere").read_text() == "x"


def test_a_file_or_a_link_is_not_a_state_folder(tmp_path: Path) -> None:
    marked = tmp_path / "marked"
    marked.mkdir()
    (marked / MARKER).write_text("")
    (marked / "keep").write_text("k")
    (tmp_path / "file").write_text("f")
    (tmp_path / "link").symlink_to(marked)
    for path in (tmp_path / "file", tmp_path / "link"):
        with pytest.raises(InputError, match="is not a folder"):
            prepare_state_dir(path)
    assert (tmp_path / "file").read_text() == "f"
    assert (marked / "keep").read_text() == "k"


# -- ports -------------------------------------------------------------------------------------
def test_a_port_in_use_is_one_line_before_anything_starts(tmp_path: Path, listener: int) -> None:
    state = tmp_path / "state"
    proc = demo("--state-dir", str(state), "--port", str(listener), timeout=30)
    assert proc.returncode == 3
    line = one_error_line(proc)
    assert line.startswith("gpucap: error: --port: ")
    assert f"port {listener} on 127.0.0.1 is not free" in line
    assert not state.exists()  # no folder made, no ledger started, no agent sending anywhere


def test_claim_ports_gives_distinct_free_ports_and_names_a_taken_one(listener: int) -> None:
    ports = claim_ports("127.0.0.1", [0, 0, 0], ["a", "b", "c"])
    assert len(set(ports)) == 3
    assert all(p > 0 for p in ports)
    with pytest.raises(DemoError) as err:
        claim_ports("127.0.0.1", [0, listener], ["--x", "--port"])
    assert err.value.path == "--port"
    assert str(listener) in err.value.reason


@pytest.mark.parametrize("port", ["-1", "65536"])
def test_a_port_outside_the_range_is_invalid_input(tmp_path: Path, port: str) -> None:
    proc = demo("--state-dir", str(tmp_path / "s"), "--port", port, timeout=30)
    assert proc.returncode == 2
    assert one_error_line(proc).startswith("gpucap: error: --port: expected 0 (a free port)")


# -- the fleet ---------------------------------------------------------------------------------
def test_a_missing_fleet_is_one_line(tmp_path: Path) -> None:
    proc = demo("--fleet", str(tmp_path / "MISSING"), "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 2
    assert one_error_line(proc) == f"gpucap: error: --fleet: no folder {tmp_path / 'MISSING'}"
    assert not (tmp_path / "s").exists()


def test_a_fleet_folder_without_its_files_or_with_a_bad_registry(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "registry.yaml").write_text("ruleset: us-bis-ai-diffusion-2025\n")
    with pytest.raises(InputError, match=r"has no agents\.yaml") as err:
        check_fleet(fleet)
    assert err.value.path == "--fleet"
    (fleet / "agents.yaml").write_text("agents: [{node: n, site: s, fake: dgx-h100}]\n")
    check_fleet(fleet)
    check_fleet(shipped("demo"))
    (fleet / "registry.yaml").write_text("ruleset: us-bis-ai-diffusion-2025\nsites: 7\n")
    proc = demo("--fleet", str(fleet), "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 2
    assert one_error_line(proc).startswith("gpucap: error: registry.yaml.sites")
    assert not (tmp_path / "s").exists()


def test_agents_file_that_is_not_yaml_is_one_line(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "registry.yaml").write_text("ruleset: us-bis-ai-diffusion-2025\n")
    (fleet / "agents.yaml").write_text("agents: [unclosed\n")
    proc = demo("--fleet", str(fleet), "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert line.startswith(f"gpucap: error: {fleet / 'agents.yaml'}: not valid YAML at line 2")


# -- the whole demo on a marked folder ---------------------------------------------------------
@pytest.mark.slow
def test_the_demo_reuses_its_own_folder(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / MARKER).write_text("gpucap demo state\n")
    (state / "stale.txt").write_text("from an earlier run")
    proc = demo("--state-dir", str(state), timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "verdict BREACH" in proc.stdout
    assert not (state / "stale.txt").exists()
    assert (state / MARKER).is_file()
    assert (state / "ledger.db").is_file()
