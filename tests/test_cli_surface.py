"""What an operator meets before running anything: `gpucap --help` lists every command on one
line each, and `gpucap completion bash|zsh` prints scripts the shells accept, generated from the
same parser."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpucap.cli import build_parser, main
from tests.conftest import unavailable


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def gpucap(*args: str) -> subprocess.CompletedProcess[str]:
    # 80 columns: what argparse wraps to where COLUMNS is unset and stdout is not a terminal.
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "gpucap", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_top_level_help_lists_every_command_on_one_line() -> None:
    proc = gpucap("--help")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    start = lines.index("  COMMAND") + 1
    end = lines.index("", start)
    listed = []
    for line in lines[start:end]:
        match = re.fullmatch(r"    (\S+) {2,}(\S.*)", line)
        assert match, f"not one line per command: {line!r}"
        listed.append(match.group(1))
    assert listed == list(_subcommands(build_parser()))
    assert {"evaluate", "ledger", "demo", "completion", "report"} <= set(listed)


def test_the_one_line_check_sees_a_wrapped_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parse above refuses a help string that wraps (what `demo`'s did)."""
    monkeypatch.setenv("COLUMNS", "40")
    text = build_parser().format_help().splitlines()
    start = text.index("  COMMAND") + 1
    body = text[start : text.index("", start)]
    assert any(not re.fullmatch(r"    (\S+) {2,}(\S.*)", line) for line in body)


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    out = {}
    for shell in ("bash", "zsh"):
        proc = gpucap("completion", shell)
        assert proc.returncode == 0, proc.stderr
        out[shell] = proc.stdout
    return out


def test_bash_completion_is_valid_bash_naming_every_command(
    scripts: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "gpucap.bash"
    script.write_text(scripts["bash"])
    bash = shutil.which("bash")
    if bash is None:
        unavailable("bash is not installed")
    check = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    parser = build_parser()
    listed = re.search(r"^_shtab_gpucap_subparsers=\((.*)\)$", scripts["bash"], re.M)
    assert listed is not None
    assert listed.group(1).split() == list(_subcommands(parser))
    ledger = re.search(r"^_shtab_gpucap_ledger_subparsers=\((.*)\)$", scripts["bash"], re.M)
    assert ledger is not None
    assert ledger.group(1).split() == list(_subcommands(_subcommands(parser)["ledger"]))
    # What bash offers, from the script's own completion function.
    assert complete(bash, script, "gpucap", "led") == ["ledger"]
    assert complete(bash, script, "gpucap", "catalogue", "--no-h") == ["--no-headers"]
    assert complete(bash, script, "gpucap", "ledger", "nodes", "-o", "") == [
        "table",
        "json",
        "csv",
        "yaml",
    ]
    assert complete(bash, script, "gpucap", "completion", "") == ["bash", "zsh"]


def complete(bash: str, script: Path, *words: str) -> list[str]:
    """The completions bash's completion function gives for the last of `words`."""
    program = (
        'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; '
        'COMP_POINT=${#COMP_LINE}; _shtab_gpucap; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    proc = subprocess.run(
        [bash, "-c", program, "complete", str(script), *words],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_zsh_completion_is_valid_zsh_naming_every_command(
    scripts: dict[str, str], tmp_path: Path
) -> None:
    text = scripts["zsh"]
    assert text.startswith("#compdef gpucap\n")
    for name in _subcommands(build_parser()):
        assert re.search(rf"^\s*{re.escape(name)}:'", text, re.M), name
    zsh = shutil.which("zsh")
    if zsh is None:
        return  # the structure above is what can be checked without zsh
    script = tmp_path / "_gpucap"
    script.write_text(text)
    check = subprocess.run([zsh, "-n", str(script)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


def test_completion_for_another_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["completion", "fish"])
    assert exc.value.code == 2
    assert "invalid choice: 'fish'" in capsys.readouterr().err
