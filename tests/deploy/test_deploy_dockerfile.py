"""The Dockerfile's structure and its build context (no container engine is needed to check
them: the build stage's COPY set is copied as COPY does, and the wheel is built from it)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

from tests.deploy.deploy_testkit import ROOT
from tests.test_packaging import build_wheel, built_wheel, check_wheel

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


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


def _build_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    starts = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    assert len(starts) == 2, "expected a build stage and a runtime stage"
    return steps[starts[0] : starts[1]]


def _context_copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context into the build stage."""
    copies = []
    for word, arg in _build_stage():
        if word == "COPY":
            tokens = shlex.split(arg)
            assert not any(t.startswith("--") for t in tokens), f"COPY {arg}: flags not expected"
            copies.append((tokens[:-1], tokens[-1]))
    return copies


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker matches it: `**` spans folders, `*` and `?` stay within
    one path segment, and a pattern that matches a folder excludes what is inside."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)


def _ignore_patterns() -> list[str]:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()]
    patterns = [ln.strip("/") for ln in lines if ln and not ln.startswith("#")]
    for pattern in patterns:
        # The emulation below implements this subset; Docker reads more (exceptions, classes).
        assert not set(pattern) & set("![]\\"), f"{pattern!r}: syntax the emulation lacks"
    return patterns


def _context_filter() -> Callable[[str], bool]:
    """Whether a context path (relative, with /) is left out by .dockerignore."""
    regexes = [_ignore_regex(p) for p in _ignore_patterns()]

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        return any(rx.fullmatch(prefix) for rx in regexes for prefix in prefixes)

    return ignored


def emulate_build_context(dest: Path, skip: frozenset[str] = frozenset()) -> Path:
    """The build stage's /src as the COPY instructions make it (less the sources in `skip`):
    folders recursively, symlinks inside them copied as symlinks, .dockerignore applied."""
    ignored = _context_filter()

    def leave_out(folder: str, names: list[str]) -> set[str]:
        base = Path(folder).relative_to(ROOT).as_posix()
        return {n for n in names if ignored(f"{base}/{n}")}

    for sources, target in _context_copies():
        assert len(sources) == 1 or target.endswith("/"), f"COPY {sources} {target}: needs a /"
        for source in sources:
            if source in skip:
                continue
            path = ROOT / source
            assert path.exists(), f"COPY {source}: not in the repository"
            assert not ignored(source), f"COPY {source}: excluded by .dockerignore"
            to = dest / target
            if path.is_dir():
                shutil.copytree(path, to, symlinks=True, ignore=leave_out, dirs_exist_ok=True)
            else:
                to = to / path.name if target.endswith("/") else to
                to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, to)
    return dest


def test_runtime_stage_is_python_311_slim() -> None:
    assert _final_stage()[0] == ("FROM", "python:3.11-slim")
    assert all(arg.split()[0] == "python:3.11-slim" for w, arg in _instructions() if w == "FROM")


def test_the_project_is_installed_with_every_symlinked_part() -> None:
    copied = {source for sources, _ in _context_copies() for source in sources}
    parts = {path.name for path in (ROOT / "gpucap").iterdir() if path.is_symlink()}
    assert parts, "gpucap/ has no symlinked parts; the layout changed"
    assert parts | {"gpucap", "pyproject.toml", "setup.py", "README.md", "LICENSE"} <= copied
    runs = " ".join(arg for word, arg in _final_stage() if word == "RUN")
    assert "pip install" in runs


def test_the_build_context_makes_a_complete_wheel(tmp_path: Path) -> None:
    context = emulate_build_context(tmp_path / "src")
    for link in (p for p in context.rglob("*") if p.is_symlink()):
        resolved = link.resolve()
        assert resolved.is_relative_to(context.resolve()), f"{link} leaves the context"
        assert resolved.exists(), f"{link} -> {link.readlink()} dangles in the context"
    assert not list(context.rglob("__pycache__"))  # .dockerignore applied
    check_wheel(built_wheel(context, tmp_path / "wheels"))


def test_a_context_without_a_linked_folder_stops_the_build(tmp_path: Path) -> None:
    context = emulate_build_context(tmp_path / "src", skip=frozenset({"ledger"}))
    result = build_wheel(context, tmp_path / "wheels")
    assert result.returncode != 0
    assert (
        "gpucap build: gpucap/ledger is a symlink to ../ledger, which is not a package folder here"
        in result.stdout + result.stderr
    )


def test_the_image_installs_the_wheel_with_the_ledger_extra_offline() -> None:
    wheel_runs = [shlex.split(arg) for word, arg in _build_stage() if word == "RUN"]
    wheel = next(cmd for cmd in wheel_runs if cmd[:4] == ["python", "-m", "pip", "wheel"])
    assert ".[ledger]" in wheel
    assert "--no-deps" not in wheel  # the ledger's dependencies become wheels too
    assert wheel[wheel.index("--wheel-dir") + 1] == "/wheels"
    installs = [shlex.split(arg.split("&&")[0]) for word, arg in _final_stage() if word == "RUN"]
    install = next(cmd for cmd in installs if cmd[:4] == ["python", "-m", "pip", "install"])
    assert "gpucap[ledger]" in install
    assert {"--no-index", "--find-links"} <= set(install)
    assert install[install.index("--find-links") + 1] == "/wheels"


def test_dockerignore_keeps_local_state_out_and_every_copied_source_in() -> None:
    ignored = _context_filter()
    for local in (".venv", ".git", "agent/__pycache__", "gpucap/core/__pycache__/x.pyc"):
        assert ignored(local), local
    assert ignored("gpucap.egg-info/PKG-INFO")
    for sources, _ in _context_copies():
        for source in sources:
            assert not ignored(source), source
    assert not ignored("gpucap/data/demo/registry.yaml")
    assert not ignored("ledger/migrations/versions/0001_initial.py")


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
