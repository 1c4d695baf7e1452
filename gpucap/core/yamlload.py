"""The YAML loader behind `data.load_yaml_text`: the project's scalar rules on libyaml's C parser.

One resolver, `ScalarRules`, holds the rules (YAML 1.2 booleans, no implicit timestamps); two
loaders use it and build the same documents:
  PureLoader  PyYAML's pure-Python parser with SafeConstructor: the reference, and the only
              loader when PyYAML is built without libyaml (`yaml.__with_libyaml__` false).
  FastLoader  libyaml's C parser (`CParser`, as in `yaml.CSafeLoader`) with `PlainConstructor`,
              about 25 times faster on a large scenario.
`load` answers with FastLoader and hands a text to PureLoader wherever the two could differ, so
documents and errors stay PyYAML's: a text libyaml would accept where PyYAML does not (see
`libyaml_reads_alike`), and any error, whose wording and line/column then come from PyYAML as
before (an invalid file costs the old parse time). One difference is left: collections nested
about 500 to 1,000 deep, where PyYAML's recursive parser runs out of stack, now load.
"""

from __future__ import annotations

import contextlib
import gc
import re
from collections.abc import Iterator
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

_TAG = "tag:yaml.org,2002:"
_BOOL, _TIMESTAMP, _STR, _NULL = _TAG + "bool", _TAG + "timestamp", _TAG + "str", _TAG + "null"
_INT, _FLOAT, _MAP, _SEQ = _TAG + "int", _TAG + "float", _TAG + "map", _TAG + "seq"

# A block scalar header touching a comment (`|#`): PyYAML rejects it, libyaml does not.
_HEADER_COMMENT = re.compile(r"[|>][-+0-9]*#")


class ScalarRules(Resolver):
    """PyYAML's resolver with YAML 1.2 booleans (`NO` stays a string) and no implicit dates."""


ScalarRules.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _TIMESTAMP)]
    for first, resolvers in Resolver.yaml_implicit_resolvers.items()
}
ScalarRules.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class PureLoader(Reader, Scanner, Parser, Composer, SafeConstructor, ScalarRules):
    """`yaml.SafeLoader` with `ScalarRules`: the reference for every other loader here."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        ScalarRules.__init__(self)


class _NotPlainError(Exception):
    """A node that `PlainConstructor` leaves to SafeConstructor."""


_MISSING = object()


class PlainConstructor(SafeConstructor):
    """SafeConstructor with a fast path for documents of plain mappings, lists and scalars.

    The fast path builds what SafeConstructor builds (aliases share one object) and never changes
    a node; a document with anything else (an explicit tag other than the plain ones, a merge key,
    a non-scalar key) or any error is built again by SafeConstructor itself.
    """

    def __init__(self) -> None:
        super().__init__()
        self._known: dict[str, dict[str, Any]] = {_INT: {}, _FLOAT: {}, _BOOL: {}}

    def construct_document(self, node: Node) -> Any:
        try:
            data = self._object(node)
        except Exception:  # SafeConstructor gives the answer, error or not
            self.constructed_objects = {}
            return super().construct_document(node)
        self.constructed_objects = {}
        return data

    def _scalar(self, node: Node) -> Any:
        tag = node.tag
        if tag == _STR:
            return node.value
        if tag == _NULL:
            return None
        known = self._known.get(tag)
        if known is None:  # other tags, merge keys `<<` and value keys `=` among them
            raise _NotPlainError(tag)
        # Ints, floats and booleans are functions of the text: each distinct text is read once.
        value = known.get(node.value, _MISSING)
        if value is _MISSING:
            value = known[node.value] = self.yaml_constructors[tag](self, node)
        return value

    def _object(self, node: Node) -> Any:
        kind = type(node)
        if kind is ScalarNode:
            return self._scalar(node)
        done = self.constructed_objects
        if node in done:  # an alias (or a recursive reference) to a collection built already
            return done[node]
        if kind is MappingNode and node.tag == _MAP:
            mapping: dict[Any, Any] = {}
            done[node] = mapping
            scalar = self._scalar
            for key_node, value_node in node.value:
                if type(key_node) is not ScalarNode:
                    raise _NotPlainError("a collection as a key")
                key = key_node.value if key_node.tag == _STR else scalar(key_node)
                if type(value_node) is not ScalarNode:
                    mapping[key] = self._object(value_node)
                elif value_node.tag == _STR:  # most values: text as it stands
                    mapping[key] = value_node.value
                else:
                    mapping[key] = scalar(value_node)
            return mapping
        if kind is SequenceNode and node.tag == _SEQ:
            items: list[Any] = []
            done[node] = items
            items.extend(map(self._object, node.value))
            return items
        raise _NotPlainError(node.tag)


FastLoader: type[Any] | None = None
if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _FastLoader(CParser, PlainConstructor, ScalarRules):
        """libyaml's parser and composer with `ScalarRules` and `PlainConstructor`."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            PlainConstructor.__init__(self)
            ScalarRules.__init__(self)
            self._tags: dict[str, str] = {}

        def resolve(self, kind: type[Node], value: str | None, implicit: Any) -> str:
            if kind is ScalarNode and value is not None:
                if implicit[0]:
                    # A plain scalar's tag depends on its text alone (there are no path
                    # resolvers): each distinct text is matched against the resolvers once.
                    tag = self._tags.get(value)
                    if tag is None:
                        tag = self._tags[value] = self._resolve(kind, value, implicit)
                    return tag
                if value == "" and not implicit[1]:
                    # An empty scalar tagged `!`: libyaml marks it not implicit, PyYAML plain.
                    return self._resolve(kind, value, (True, False))
            return self._resolve(kind, value, implicit)

        def _resolve(self, kind: type[Node], value: str | None, implicit: Any) -> str:
            tag: str = super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]  # untyped in PyYAML's stubs
            return tag

    FastLoader = _FastLoader

LOADER = "libyaml C parser" if FastLoader is not None else "pure Python"


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (the process's own setting comes back after).

    A load allocates millions of nodes, marks and values and frees them by reference counting;
    left running, the collector rescans them again and again: 6 of 8 s on 100,000 lines.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def libyaml_reads_alike(text: str) -> bool:
    """Whether libyaml certainly reads `text` as PyYAML does (else PyYAML must read it).

    Both give the same document for every text PyYAML accepts, but libyaml also accepts some
    that PyYAML rejects: a tab between tokens, `?` inside a plain scalar of a flow collection
    (`{url: a?b}`), a tag ended by `,` in one, a block scalar header touching a `#`, and a byte
    order mark past the start. A text with none of these outside whole-line comments is safe.
    """
    if text.find("\ufeff", 1) >= 0:
        return False
    if ("|" in text or ">" in text) and _HEADER_COMMENT.search(text):
        return False
    if "\t" in text or "?" in text or "!" in text:
        risky = (ln for ln in text.splitlines() if "\t" in ln or "?" in ln or "!" in ln)
        return all(ln.lstrip(" ").startswith("#") for ln in risky)
    return True


def uses_libyaml(text: str) -> bool:
    """Whether `load` reads this text with libyaml (else with the pure-Python reference)."""
    return FastLoader is not None and libyaml_reads_alike(text)


def load(text: str) -> Any:
    """Parse YAML text with `ScalarRules`: the same document, or error, as `PureLoader` gives."""
    fast = FastLoader
    with _collector_paused():
        if fast is not None and libyaml_reads_alike(text):
            # On any error the reference parses again, for PyYAML's wording and line/column.
            with contextlib.suppress(Exception):
                return _single_document(fast(text))
        return _single_document(PureLoader(text))


def load_reference(text: str) -> Any:
    """Parse with PureLoader alone, as `load` did before libyaml (for tests and benchmarks)."""
    return _single_document(PureLoader(text))


def _single_document(loader: Any) -> Any:
    """What `yaml.load` does with a loader: the stream's one document (None when empty)."""
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
