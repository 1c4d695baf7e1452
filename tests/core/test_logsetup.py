"""The daemons' log lines: UTC timestamps, text and JSON, uvicorn routed through, held records."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from gpucap.core import logsetup
from gpucap.core.errors import InputError

# 2026-12-01T15:12:02.123Z
CREATED = 1_796_137_922.123


def record(
    msg: str = "hello %s",
    args: tuple[object, ...] = ("world",),
    name: str = "gpucap.ledger",
    level: int = logging.WARNING,
    **extra: object,
) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    rec.created, rec.msecs = CREATED, 123.0
    rec.__dict__.update(extra)
    return rec


@pytest.fixture
def isolated_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], io.StringIO]]:
    """A function that swaps in a stderr to read (called in the test: pytest sets its own
    at the start of each phase), and the process's logging as it was afterwards."""

    def stderr() -> io.StringIO:
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    root = logging.getLogger()
    names = ("uvicorn", "uvicorn.error", "uvicorn.access", "alembic")
    saved = (root.handlers[:], root.level, {n: vars(logging.getLogger(n)).copy() for n in names})
    try:
        yield stderr
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, state in saved[2].items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = state["handlers"], state["propagate"]
            logger.level, logger.disabled = state["level"], state["disabled"]


def test_a_text_line_is_utc_milliseconds_level_logger_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "XYZ-14")  # a machine at UTC+14, where local time shows 05:12
    time.tzset()
    try:
        assert time.localtime(CREATED).tm_hour == 5
        line = logsetup.TextFormatter().format(record())
    finally:
        monkeypatch.undo()
        time.tzset()
    assert line == "2026-12-01T15:12:02.123Z WARNING gpucap.ledger: hello world"


def test_a_text_line_escapes_control_characters_so_a_value_cannot_forge_a_line() -> None:
    forged = "x\n2026-12-01T00:00:00.000Z INFO gpucap.ledger: all fine\x1b[2J"
    line = logsetup.TextFormatter().format(record("scope %s", (forged,)))
    assert "\n" not in line
    assert line.endswith(
        "scope x\\x0a2026-12-01T00:00:00.000Z INFO gpucap.ledger: all fine\\x1b[2J"
    )


def test_a_json_line_carries_the_extras_and_the_traceback() -> None:
    try:
        raise ValueError("broken")
    except ValueError:
        rec = record(client="10.0.0.7:5123", token_id="ab12", status=403, reason="wrong_kind")
        rec.exc_info = sys.exc_info()
    rec.color_message = "\x1b[1mhello\x1b[0m %s"  # uvicorn's; not a field
    line = logsetup.JsonFormatter().format(rec)
    assert "\n" not in line
    doc = json.loads(line)
    exc = doc.pop("exc")
    assert exc.startswith("Traceback")
    assert exc.endswith("ValueError: broken")
    assert doc == {
        "ts": "2026-12-01T15:12:02.123Z",
        "level": "WARNING",
        "logger": "gpucap.ledger",
        "message": "hello world",
        "client": "10.0.0.7:5123",
        "token_id": "ab12",
        "status": 403,
        "reason": "wrong_kind",
    }


def test_an_extra_cannot_replace_the_line_s_own_fields_and_odd_values_become_text() -> None:
    doc = json.loads(logsetup.JsonFormatter().format(record(logger="fake", where=object)))
    assert doc["logger"] == "gpucap.ledger"
    assert doc["where"] == "<class 'object'>"


def test_an_access_record_becomes_fields() -> None:
    args = ("127.0.0.1:40000", "GET", "/v1/headroom?scope=site:a", "1.1", 401)
    rec = record('%s - "%s %s HTTP/%s" %d', args, name="uvicorn.access", level=logging.INFO)
    doc = json.loads(logsetup.JsonFormatter().format(rec))
    assert doc["message"] == '127.0.0.1:40000 - "GET /v1/headroom?scope=site:a HTTP/1.1" 401'
    assert (doc["client"], doc["method"], doc["status"]) == ("127.0.0.1:40000", "GET", 401)
    assert doc["path"] == "/v1/headroom?scope=site:a"


@pytest.mark.parametrize("value", ["TEXT", " json "])
def test_formats_are_read_leniently(value: str) -> None:
    assert logsetup.check_format(value, "--log-format") == value.strip().lower()


@pytest.mark.parametrize("value", ["", "xml", "jsonl"])
def test_an_unknown_format_names_where_it_came_from(value: str) -> None:
    with pytest.raises(InputError) as info:
        logsetup.check_format(value, "GPUCAP_LOG_FORMAT")
    assert (info.value.path, info.value.reason) == (
        "GPUCAP_LOG_FORMAT",
        f"expected text or json, got {value!r}",
    )


def test_configure_routes_uvicorn_through_the_one_handler(
    isolated_logging: Callable[[], io.StringIO],
) -> None:
    stderr = isolated_logging()
    logging.getLogger("uvicorn.error").addHandler(logging.StreamHandler(sys.stderr))  # its own
    logsetup.configure("json")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 7)
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "a:1", "GET", "/", 1.1, 200)
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    logging.getLogger("gpucap.agent").debug("not at INFO")
    logging.getLogger("gpucap.agent").info("up")
    docs = [json.loads(line) for line in stderr.getvalue().splitlines()]
    assert [(d["logger"], d["message"]) for d in docs] == [
        ("uvicorn.error", "Started server process [7]"),
        ("uvicorn.access", 'a:1 - "GET / HTTP/1.1" 200'),
        ("gpucap.agent", "up"),
    ]
    logsetup.configure("text")  # again, as each uvicorn.Config does: still one line each
    logging.getLogger("uvicorn.error").warning("again")
    assert stderr.getvalue().splitlines()[-1].endswith(" WARNING uvicorn.error: again")
    assert len(stderr.getvalue().splitlines()) == 4


def test_records_held_until_the_format_is_known_come_out_in_it(
    isolated_logging: Callable[[], io.StringIO],
) -> None:
    stderr = isolated_logging()
    logging.getLogger().setLevel(logging.INFO)
    config = logging.getLogger("logsetup-test.config")  # no level of its own: the root's applies
    held = logsetup.hold()
    config.warning("unknown key %s ignored", "GPUCAP_BOGUS")
    config.info("second")
    assert stderr.getvalue() == ""  # nothing before the format is known
    logsetup.release(held, "json", "WARNING")
    docs = [json.loads(line) for line in stderr.getvalue().splitlines()]
    # Held in order; the level configured with the format applies to them too.
    assert [(d["level"], d["message"]) for d in docs] == [
        ("WARNING", "unknown key GPUCAP_BOGUS ignored")
    ]
    assert held not in logging.getLogger().handlers
