"""The YAML loader: libyaml's C parser gives every document and every error the pure-Python
reference gives, under the project's scalar rules (YAML 1.2 booleans, dates left as text)."""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gpucap.core import yamlload
from gpucap.core.data import read_yaml
from gpucap.core.errors import InputError
from gpucap.core.yamlload import load_reference
from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]
Load = Callable[[str], Any]


def _no_libyaml() -> None:
    """PyYAML without libyaml: a skip on a developer's machine, a failure under CI=true."""
    unavailable("PyYAML is built without libyaml (every load would take the pure-Python path)")


def _libyaml(text: str) -> Any:
    fast = yamlload.FastLoader
    if fast is None:
        _no_libyaml()
    loader = fast(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


LOADERS: dict[str, Load] = {"pure": load_reference, "libyaml": _libyaml, "load": yamlload.load}


@pytest.fixture(params=list(LOADERS))
def load(request: pytest.FixtureRequest) -> Load:
    """Each loader on its own, and `load` as the project calls it."""
    return LOADERS[request.param]


def _outcome(fn: Load, text: str) -> tuple[object, ...]:
    """A document by its repr (types, order, shared and recursive parts), or the error: its kind,
    wording and marks (line and column; libyaml's marks carry no snippet of the text)."""
    try:
        return ("document", repr(fn(text)))
    except yaml.MarkedYAMLError as exc:
        marks = [(m.line, m.column) if m else None for m in (exc.context_mark, exc.problem_mark)]
        return (type(exc).__name__, exc.context, exc.problem, *marks, exc.note)
    except Exception as exc:  # compared as they are, whatever they are
        return (type(exc).__name__, str(exc))


def test_libyaml_is_the_loader_where_pyyaml_has_it() -> None:
    if not yaml.__with_libyaml__:
        _no_libyaml()
    assert yamlload.FastLoader is not None
    assert yamlload.LOADER == "libyaml C parser"
    text = (ROOT / "gpucap/data/examples/fleet.yaml").read_text(encoding="utf-8")
    assert yamlload.uses_libyaml(text)


SCALARS: list[tuple[str, object]] = [
    # YAML 1.2 booleans: only true/false; YAML 1.1's yes/no/on/off/y/n stay text.
    ("NO", "NO"),
    ("no", "no"),
    ("No", "No"),
    ("yes", "yes"),
    ("Yes", "Yes"),
    ("on", "on"),
    ("OFF", "OFF"),
    ("y", "y"),
    ("n", "n"),
    ("true", True),
    ("True", True),
    ("TRUE", True),
    ("false", False),
    ("False", False),
    ("FALSE", False),
    ("tRUE", "tRUE"),
    # Dates and times stay text until parse_day reads them (so impossible ones are input errors).
    ("2025-06-01", "2025-06-01"),
    ("2025-13-01", "2025-13-01"),
    ("2025-02-30", "2025-02-30"),
    ("2025-06-01T10:00:00", "2025-06-01T10:00:00"),
    ("2001-12-14 21:59:43.10 -5", "2001-12-14 21:59:43.10 -5"),
    ("'2025-06-01'", "2025-06-01"),
    # Numbers, null and quoting as PyYAML reads them.
    ("15832", 15832),
    ("-7", -7),
    ("0x1F", 31),
    ("017", 15),
    ("1_000", 1000),
    ("190:20:30", 685230),
    ("1.5", 1.5),
    ("1.0e+3", 1000.0),
    ("1e3", "1e3"),
    ("-.inf", -math.inf),
    ("~", None),
    ("null", None),
    ("Null", None),
    ("", None),
    ("'NO'", "NO"),
    ('"true"', "true"),
    ('"\\u00e9"', "é"),
    ("!!str 1", "1"),
    ("!!bool yes", True),
    ("!!timestamp 2025-06-01", date(2025, 6, 1)),
]


@pytest.mark.parametrize(("text", "expected"), SCALARS)
def test_scalar_rules(load: Load, text: str, expected: object) -> None:
    value = load(f"value: {text}\n")["value"]
    assert type(value) is type(expected)
    assert value == expected


def test_nan(load: Load) -> None:
    assert math.isnan(load("value: .nan\n")["value"])


def test_norway_in_a_scenario(load: Load) -> None:
    doc = load(
        "countries: {NO: {gov_agreement: true}}\n"
        "entities:\n  - {id: fjord, headquarters: NO, status: uveu}\n"
        "inventory:\n  - {site: f1, count: 1, installed: 2025-06-01}\n"
    )
    assert doc == {
        "countries": {"NO": {"gov_agreement": True}},
        "entities": [{"id": "fjord", "headquarters": "NO", "status": "uveu"}],
        "inventory": [{"site": "f1", "count": 1, "installed": "2025-06-01"}],
    }


CONSTRUCTS = [
    "a: &x [1, 2]\nb: *x\n",  # aliases share one object
    "&a [*a, 1]",  # a list that holds itself
    "&m {self: *m}",
    "base: &b {x: 1, y: 2}\nmore:\n  <<: *b\n  y: 3\n",  # merge keys
    "a:\n  <<: [{x: 1}, {x: 2, z: 3}]\n",
    "=: value\nother: 1\n",  # a value key
    "a: 1\na: 2\nb: 3\n",  # a duplicate key: the last one wins
    "1: one\ntrue: yes\n~: none\n1.5: x\n",  # non-text keys
    "s: !!set {a, b}\n",
    "o: !!omap [{a: 1}, {b: 2}]\n",
    "p: !!pairs [{a: 1}, {a: 2}]\n",
    "b: !!binary aGVsbG8=\n",
    "t: !!timestamp 2001-12-14t21:59:43.10-05:00\n",
    "f: !!float 3\nn: !!null ''\ni: !!int '7'\n",
    "e: !\nq: ! 12\n",  # a non-specific tag, empty and not
    "? !!null {a: 1}\n: v\n",  # scalar tags on collections
    "? !!str [a]\n: v\n",
    "a: !!null {b: 1}\n",
    "a: !!map [1]\n",
    "",
    "# only a comment\n",
    "--- |\n  a block\n  scalar\n",
    "- >-\n  folded\n  text\n- |+\n  kept\n\n",
    "? complex\n: key\n",
    "{a: [b, {c: d}], 'e': \"f\\tg\"}",
    "%YAML 1.1\n--- a\n...\n",
    "\ufeffa: 1\n",  # a byte order mark at the start
]


@pytest.mark.parametrize("text", CONSTRUCTS)
def test_constructs_match_the_reference(load: Load, text: str) -> None:
    assert _outcome(load, text) == _outcome(load_reference, text)


def test_a_text_libyaml_cannot_take_gets_the_reference_error() -> None:
    text = "a: \ud800\n"  # a lone surrogate is not UTF-8: libyaml's parser refuses the string
    assert _outcome(yamlload.load, text) == _outcome(load_reference, text)
    assert _outcome(yamlload.load, text)[0] == "ReaderError"


def test_aliases_share_one_object(load: Load) -> None:
    doc = load("a: &x [1, 2]\nb: *x\n")
    assert doc["a"] is doc["b"]


def _data_files() -> Iterator[Path]:
    for folder in ("gpucap/data", "tests/core/golden", "agent/scenarios"):
        yield from sorted((ROOT / folder).rglob("*.yaml"))


DATA_FILES = [p.relative_to(ROOT).as_posix() for p in _data_files()]


@pytest.mark.parametrize("name", DATA_FILES)
def test_data_files_match_the_reference(load: Load, name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    assert _outcome(load, text) == _outcome(load_reference, text)


# The messages of the loader before libyaml (PyYAML's pure-Python parser), with line and column.
ERRORS = [
    ("ruleset: [unclosed", "line 1, column 19: expected ',' or ']', but got '<stream end>'"),
    ("a: b: c", "line 1, column 5: mapping values are not allowed here"),
    ("a: *nope", "line 1, column 4: found undefined alias 'nope'"),
    ("a: 1\n---\nb: 2", "line 2, column 1: but found another document"),
    ("key: value\n  bad: indent", "line 2, column 6: mapping values are not allowed here"),
    ("a: !unknown x", "line 1, column 4: could not determine a constructor for the tag '!unknown'"),
    ("[a, b]: 1", "line 1, column 1: found unhashable key"),
    ("é: [ü", "line 1, column 6: expected ',' or ']', but got '<stream end>'"),
    (
        "a:\n  - 1\n - 2",
        "line 3, column 2: expected <block end>, but found '<block sequence start>'",
    ),
    ("a: 1\nb", "line 2, column 2: could not find expected ':'"),
    ("&x a: 1\n&x b: 2", "line 2, column 1: second occurrence"),
    (
        "<<: 3",
        "line 1, column 5: expected a mapping or list of mappings for merging, but found scalar",
    ),
    ("a: 'x", "line 1, column 6: found unexpected end of stream"),
    # Texts libyaml would accept: PyYAML's answer stands.
    ("a:\t1\n", "line 1, column 3: found character '\\t' that cannot start any token"),
    ("a: 1\t\n", "line 1, column 5: found character '\\t' that cannot start any token"),
    ("sites:\n  - {id: s1, note: why?}\n", "line 2, column 23: expected ',' or '}', but got '?'"),
    ("a: [!!str,b]", "line 1, column 13: expected ',' or ']', but got '<stream end>'"),
    (
        "a: >#\n  b\n",
        "line 1, column 5: expected chomping or indentation indicators, but found '#'",
    ),
]


@pytest.mark.parametrize(("text", "where_and_problem"), ERRORS)
def test_errors_name_line_and_column_as_before(
    tmp_path: Path, text: str, where_and_problem: str
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        read_yaml(path, error=InputError)
    assert caught.value.reason == f"not valid YAML at {where_and_problem}"


def test_a_control_character_is_malformed_yaml(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("a: \x00\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"s\.yaml: not valid YAML: malformed YAML$"):
        read_yaml(path, error=InputError)


@pytest.mark.parametrize(
    ("text", "alike"),
    [
        ("inventory:\n  - {site: s1, count: 8, installed: 2025-06-01}\n", True),
        ("# Why? Because! (a\ttab)\nruleset: x\n", True),
        ("  # an indented comment? yes!\nruleset: x\n", True),
        ("\ufeffruleset: x\n", True),
        ("a:\t1\n", False),
        ("\t# a tab before a comment\n", False),
        ("{url: http://example.com/?q=1}\n", False),
        ("a: 'why?'  # a quoted ? is safe, but not worth telling apart\n", False),
        ("a: [!!str,b]\n", False),
        ("a: |#\n  b\n", False),
        ("a: 1\n\ufeffb: 2\n", False),
    ],
)
def test_which_texts_libyaml_reads_alike(text: str, alike: bool) -> None:
    assert yamlload.libyaml_reads_alike(text) is alike
    assert yamlload.uses_libyaml(text) is (alike and yamlload.FastLoader is not None)


@pytest.mark.parametrize("enabled", [True, False])
def test_load_leaves_the_garbage_collector_as_it_was(enabled: bool) -> None:
    was = gc.isenabled()
    _collector(enabled)
    try:
        yamlload.load("a: [1, 2]\n")
        assert gc.isenabled() is enabled
        with pytest.raises(yaml.YAMLError):
            yamlload.load("a: [1, 2\n")
        assert gc.isenabled() is enabled
    finally:
        _collector(was)


def _collector(enabled: bool) -> None:
    if enabled:
        gc.enable()
    else:
        gc.disable()


# Pieces of YAML, tabs and all, glued at random: mostly invalid texts, many valid ones.
PIECES = [
    *("a", "b", "NO", "yes", "true", "~", "null", "1", "-7", "0x1F", "017", "1_000", "1:30"),
    *(".inf", ".nan", "1.5", "1e3", "2025-06-01", "2025-13-01", "é", "😀", "=", "<<"),
    *(" ", "  ", "\n", "\n  ", "\n- ", "- ", ": ", ":", ",", ", ", "[", "]", "{", "}", "? ", "?"),
    *("'", '"', "'it''s'", '"a\\tb"', '"\\u00e9"', "#", " # c", "&x ", "*x", "! ", "!!str "),
    *("!!int ", "!!bool ", "!!set ", "!!binary ", "!!map ", "!!seq ", "!e!x ", "|", ">", "|-\n "),
    *("\t", "\r\n", "\x85", "\u2028", "\ufeff", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! x:\n"),
    *("key: value\n", "- {site: s1, count: 8, installed: 2025-06-01}\n", "a: &a {b: *a}\n"),
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=30).map("".join))
def test_random_texts_load_as_the_reference_does(text: str) -> None:
    assert _outcome(yamlload.load, text) == _outcome(load_reference, text)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["NO", "yes", "off", "2025-06-01", "2025-13-01", "1_000", "0x1F", "~", "<<"]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(scalars, inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(documents, st.sampled_from([None, True, False]), st.sampled_from([None, "'", '"']))
def test_dumped_documents_load_as_the_reference_does(
    doc: Any, flow: bool | None, style: str | None
) -> None:
    text = yaml.safe_dump(
        doc, default_flow_style=flow, default_style=style, allow_unicode=True, sort_keys=False
    )
    assert _outcome(yamlload.load, text) == _outcome(load_reference, text)
