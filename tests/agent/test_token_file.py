"""The agent's token from `--token-file`/GPUCAP_TOKEN_FILE and its CA from `--ca-file`: which
source wins, what is refused (exit 2 naming the option), and that a reload re-reads the file."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpucap.agent.config import load_config
from gpucap.agent.errors import ConfigError
from tests.tlstest import make_pki

BASE = {"GPUCAP_LEDGER": "https://ledger.test:8470", "GPUCAP_NODE_ID": "n", "GPUCAP_SITE": "s"}


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("from-the-file\n", encoding="utf-8")
    return path


def test_the_token_file_gives_the_token(token_file: Path) -> None:
    config = load_config({}, environ={**BASE, "GPUCAP_TOKEN_FILE": str(token_file)})
    assert config.token == "from-the-file"
    assert config.token_file == token_file
    flagged = load_config({"token_file": str(token_file)}, environ=BASE)
    assert flagged.token == "from-the-file"


@pytest.mark.parametrize(
    ("flags", "file_lines", "env", "token", "ignored"),
    [
        # A flag beats the config file, which beats the environment; either way round.
        ({"token_file": "{file}"}, "", {"GPUCAP_TOKEN": "env"}, "from-the-file", "GPUCAP_TOKEN"),
        ({"token": "flag"}, "", {"GPUCAP_TOKEN_FILE": "{file}"}, "flag", "GPUCAP_TOKEN_FILE"),
        ({}, "GPUCAP_TOKEN_FILE={file}", {"GPUCAP_TOKEN": "env"}, "from-the-file", "GPUCAP_TOKEN"),
        ({}, "GPUCAP_TOKEN=conf", {"GPUCAP_TOKEN_FILE": "{file}"}, "conf", "GPUCAP_TOKEN_FILE"),
        ({"token": "flag"}, "GPUCAP_TOKEN_FILE={file}", {}, "flag", "GPUCAP_TOKEN_FILE"),
    ],
)
def test_the_higher_source_wins_and_the_other_is_logged(
    tmp_path: Path,
    token_file: Path,
    caplog: pytest.LogCaptureFixture,
    flags: dict[str, str],
    file_lines: str,
    env: dict[str, str],
    token: str,
    ignored: str,
) -> None:
    conf = tmp_path / "agent.env"
    conf.write_text(file_lines.format(file=token_file) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="gpucap.agent.config"):
        config = load_config(
            {k: v.format(file=token_file) for k, v in flags.items()},
            environ={**BASE, **{k: v.format(file=token_file) for k, v in env.items()}},
            config_file=conf,
        )
    assert config.token == token
    assert any(f"{ignored} is ignored" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("flags", "file_lines", "env", "field"),
    [
        ({"token": "a", "token_file": "{file}"}, "", {}, "--token-file"),
        ({}, "", {"GPUCAP_TOKEN": "a", "GPUCAP_TOKEN_FILE": "{file}"}, "GPUCAP_TOKEN_FILE"),
        ({}, "GPUCAP_TOKEN=a\nGPUCAP_TOKEN_FILE={file}", {}, "{conf}: GPUCAP_TOKEN_FILE"),
    ],
)
def test_a_token_and_a_token_file_at_the_same_level_are_refused(
    tmp_path: Path,
    token_file: Path,
    flags: dict[str, str],
    file_lines: str,
    env: dict[str, str],
    field: str,
) -> None:
    conf = tmp_path / "agent.env"
    conf.write_text(file_lines.format(file=token_file) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(
            {k: v.format(file=token_file) for k, v in flags.items()},
            environ={**BASE, **{k: v.format(file=token_file) for k, v in env.items()}},
            config_file=conf,
        )
    assert info.value.path == field.format(conf=conf)
    assert "not both" in info.value.reason


def test_no_token_at_all_names_both_ways_to_give_one() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({}, environ=BASE)
    assert info.value.path == "--token"
    assert "--token-file" in info.value.reason


@pytest.mark.parametrize(("content", "reason"), [("", "is empty"), (None, "cannot read")])
def test_an_empty_or_missing_token_file_names_where_it_was_given(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config({}, environ={**BASE, "GPUCAP_TOKEN_FILE": str(path)})
    assert info.value.path == "GPUCAP_TOKEN_FILE"
    assert reason in info.value.reason


def test_a_reload_reads_the_token_file_again(token_file: Path) -> None:
    env = {**BASE, "GPUCAP_TOKEN_FILE": str(token_file)}
    first = load_config({}, environ=env)
    token_file.write_text("rotated\n")
    second = load_config({}, environ=env)
    assert (first.token, second.token) == ("from-the-file", "rotated")
    applied, restart = first.reloadable_diff(second)
    assert (applied, restart) == (["token"], [])


def test_the_ca_file_is_checked_at_start(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    env = {**BASE, "GPUCAP_TOKEN": "t"}
    assert load_config({"ca_file": str(pki.ca)}, environ=env).ca_file == pki.ca
    for bad, reason in ((pki.key, "holds no PEM certificate"), (tmp_path / "x", "cannot read")):
        with pytest.raises(ConfigError) as info:
            load_config({}, environ={**env, "GPUCAP_CA_FILE": str(bad)})
        assert info.value.path == "GPUCAP_CA_FILE"
        assert reason in info.value.reason


def test_the_ca_file_needs_a_restart_to_change(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    env = {**BASE, "GPUCAP_TOKEN": "t"}
    before = load_config({}, environ=env)
    after = load_config({}, environ={**env, "GPUCAP_CA_FILE": str(pki.ca)})
    assert before.reloadable_diff(after) == ([], ["ca_file"])


def test_agent_run_with_a_bad_token_file_exits_2_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gpucap", "agent", "run", "--ledger", "http://127.0.0.1:1",
         "--node-id", "n", "--site", "s", "--token-file", str(tmp_path / "none"),
         "--spool", str(tmp_path / "spool"), "--fake", "dgx-h100"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"gpucap: error: --token-file: cannot read {tmp_path / 'none'}: No such file or directory"
    ]


def test_a_running_agent_warns_about_a_token_on_its_command_line(tmp_path: Path) -> None:
    def run(*token: str) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpucap", "agent", "run", "--ledger", "http://127.0.0.1:1",
             "--node-id", "n", "--site", "s", *token, "--spool", str(tmp_path / "spool"),
             "--fake", "dgx-h100", "--interval", "0.2"],
            stderr=subprocess.PIPE,
            text=True,
            env={"PATH": "/usr/bin:/bin", "GPUCAP_TOKEN_FILE": str(tmp_path / "token")},
        )  # fmt: skip
        time.sleep(3)
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        return err

    (tmp_path / "token").write_text("from-the-file\n")
    assert "use --token-file" in run("--token", "on-the-command-line")
    assert "use --token-file" not in run()
