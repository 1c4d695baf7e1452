"""Reading YAML files (shipped in `gpucap/data/` or named by the user), and ISO dates.

YAML is read with YAML 1.2 scalar rules: only `true`/`false` are booleans (so the country code
`NO` stays a string) and dates stay strings until `parse_day` reads them with the field path (so
an impossible date is a clear input error, not a loader crash). `yamlload` holds the rules and
the loaders (libyaml's C parser where PyYAML has it, PyYAML's pure-Python parser otherwise).
"""

from __future__ import annotations

import re
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gpucap.core import yamlload
from gpucap.core.errors import DataError, InputError
from gpucap.core.text import first_control

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def load_yaml_text(text: str) -> Any:
    """Parse YAML text with the project's scalar rules (raises yaml.YAMLError)."""
    return yamlload.load(text)


def parse_day(value: Any) -> date:
    """A calendar date from `YYYY-MM-DD` text (or a date); ValueError with the reason otherwise."""
    if isinstance(value, datetime):
        raise ValueError("expected a date (YYYY-MM-DD), not a date and time")
    if isinstance(value, date):
        return value
    if isinstance(value, str) and _DAY.match(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not a valid date: {value!r}") from None
    raise ValueError(f"expected a date (YYYY-MM-DD), got {value!r}")


def read_yaml(path: Path, *, error: type[DataError] | type[InputError] = DataError) -> Any:
    """Parse one YAML file; a missing or malformed file raises `error` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(str(path), f"cannot read file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise error(str(path), f"not UTF-8 text (byte {exc.start})") from exc
    try:
        doc = load_yaml_text(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise error(str(path), f"not valid YAML{where}: {problem}") from exc
    found = first_control(doc)  # YAML's escapes ("\0") can spell what its text cannot hold
    if found is not None:
        raise error(f"{path.name}: {found[0]}", found[1])
    return doc


def shipped(*parts: str) -> Path:
    """Path of a data file shipped inside the package."""
    return Path(str(resources.files("gpucap").joinpath("data", *parts)))


def require_mapping(value: Any, path: str) -> dict[str, Any]:
    """`value` as a mapping, or DataError naming `path`."""
    if not isinstance(value, dict):
        raise DataError(path, f"expected a mapping, got {type(value).__name__}")
    return value
