"""The Dockerfile's structure (no container engine is needed to check it)."""

from __future__ import annotations

import json
import re

from tests.deploy.deploy_testkit import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_runtime_stage_is_python_311_slim() -> None:
    assert _final_stage()[0] == ("FROM", "python:3.11-slim")
    assert all(arg.split()[0] == "python:3.11-slim" for w, arg in _instructions() if w == "FROM")


def test_the_project_is_installed_with_every_symlinked_part() -> None:
    copied = {arg.split()[0] for word, arg in _instructions() if word == "COPY"}
    parts = {path.name for path in (ROOT / "gpucap").iterdir() if path.is_symlink()}
    assert parts, "gpucap/ has no symlinked parts; the layout changed"
    assert parts | {"gpucap", "pyproject.toml"} <= copied
    runs = " ".join(arg for word, arg in _final_stage() if word == "RUN")
    assert "pip install" in runs


def test_runs_as_a_non_root_user_set_before_the_entrypoint() -> None:
    stage = _final_stage()
    users = [(i, arg) for i, (word, arg) in enumerate(stage) if word == "USER"]
    assert users, "no USER in the runtime stage"
    index, user = users[-1]
    assert user.split(":")[0] not in {"root", "0"}
    entry = next(i for i, (word, _) in enumerate(stage) if word == "ENTRYPOINT")
    assert index < entry
    assert not any(word == "USER" for word, _ in stage[index + 1 :])


def test_entrypoint_is_the_gpucap_cli_in_exec_form() -> None:
    stage = dict(_final_stage())
    assert json.loads(stage["ENTRYPOINT"]) == ["gpucap"]
    assert json.loads(stage["CMD"]) == ["--help"]
    assert set(stage["EXPOSE"].split()) == {"8470", "9470"}


def test_nothing_is_fetched_by_url_and_no_secret_is_baked_in() -> None:
    for word, arg in _instructions():
        assert word != "ADD", "use COPY; ADD fetches URLs and unpacks archives"
        if word == "ENV":
            assert not re.search(r"GPUCAP_(TOKEN|LEDGER_SECRET)", arg)
