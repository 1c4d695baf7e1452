"""Reading the YAML data files shipped in `gpucap/data/` (or a file the caller names)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gpucap.core.errors import DataError, InputError


def read_yaml(path: Path, *, error: type[DataError] | type[InputError] = DataError) -> Any:
    """Parse one YAML file; a missing or malformed file raises `error` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(str(path), f"cannot read file: {exc.strerror or exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise error(str(path), f"not valid YAML{where}: {problem}") from exc


def shipped(*parts: str) -> Path:
    """Path of a data file shipped inside the package."""
    return Path(str(resources.files("gpucap").joinpath("data", *parts)))


def require_mapping(value: Any, path: str) -> dict[str, Any]:
    """`value` as a mapping, or DataError naming `path`."""
    if not isinstance(value, dict):
        raise DataError(path, f"expected a mapping, got {type(value).__name__}")
    return value
