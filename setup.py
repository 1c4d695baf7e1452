"""Refuse to build from a checkout whose package symlinks did not survive; setuptools reads
everything else from pyproject.toml.

gpucap/agent, gpucap/ledger and gpucap/exporters are symlinks to the top-level folders. A checkout
made with core.symlinks=false (or an archive tool that drops links) leaves a small text file
holding the target path in place of each, and setuptools would then build a wheel without those
packages and say nothing. An sdist holds them as real folders, which pass the same check.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup

# The package folders that are symlinks in the repository: each must be a folder with __init__.py.
LINKED_PACKAGES = ("gpucap/agent", "gpucap/ledger", "gpucap/exporters")


def layout_problem(root: Path) -> str | None:
    """Why the tree under `root` cannot make a complete wheel, or None if it can."""
    for name in LINKED_PACKAGES:
        path = root / name
        if (path / "__init__.py").is_file():
            continue
        if path.is_file() and not path.is_symlink():
            target = path.read_text(errors="replace").strip()
            return (
                f"{name} is a {path.stat().st_size}-byte file holding {target!r}, not a package"
                " folder: this checkout did not create symlinks; clone again with"
                " `git clone -c core.symlinks=true` (or `git config core.symlinks true` and"
                " check the files out again)"
            )
        if path.is_symlink():
            return f"{name} is a symlink to {path.readlink()}, which is not a package folder here"
        return f"{name} is missing: it must be a package folder (a symlink to the top-level folder)"
    return None


problem = layout_problem(Path(__file__).resolve().parent)
if problem is not None:
    raise SystemExit(f"gpucap build: {problem}")
setup()
