"""The durable on-disk spool: every report is on disk before it is sent, until acknowledged.

Layout under the spool directory:
    .lock                          flock'ed by the one agent using the spool (holds its pid)
    state.json                     {"next_seq": N, "last_fingerprint": "..."}
    reports/<seq>.<c|h>.json       a pending report; c carries a change, h is a heartbeat
    quarantine/<name>              reports the ledger rejected (4xx) and unreadable files,
                                   each with a <name>.reason beside it

The spool keeps an index of its pending reports in memory, read from the directory once at
start (the lock on `.lock` makes this process its only writer), so a send reads one file, the
oldest, and a collection writes one: draining N reports costs O(N), not O(N^2).

Every write is temp file + fsync + rename + fsync of the directory, so a crash (kill -9,
power loss) leaves either the old or the new file. `reserve()` persists the next sequence
number before the caller uses one, so a sequence number is never handed out twice, even if
the process dies between reserving and writing its report (that number is simply skipped).

An I/O failure (ENOSPC, EIO, EACCES, a file where a directory belongs) raises SpoolError
naming the path and the reason, never leaves a half-written file, and loses no stored report;
the same call succeeds once the cause is gone.

Sequence numbers never go below the wall clock in Unix milliseconds at start (`seq_floor`).
So a lost or corrupt state.json (or a wiped spool) cannot make the agent reuse a number the
ledger has already seen: every earlier number was at most its start time in milliseconds plus
one per report since, and the agent makes far fewer than one report per millisecond.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from bisect import insort
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gpucap.agent.clock import Clock, SystemClock
from gpucap.agent.errors import SpoolError

log = logging.getLogger("gpucap.agent.spool")

# The largest sequence number: exact as a JSON number everywhere (IEEE double), and well inside
# the ledger's bound (2**62) and its BIGINT column. Unix milliseconds reach it in year 287396.
MAX_SEQ = 2**53 - 1


def seq_floor(moment: datetime) -> int:
    """The lowest sequence number to hand out at `moment`: Unix time in milliseconds."""
    return max(1, int(moment.timestamp() * 1000))


@dataclass(frozen=True)
class Spooled:
    seq: int
    change: bool
    path: Path
    report: dict[str, Any]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new content, whole.

    On an OSError the temp file is removed (best effort) and `path` is left untouched.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked (a full disk, a signal)
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def describe(exc: OSError) -> str:
    """An OSError as one stable line: 'No space left on device (ENOSPC)'."""
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


@contextmanager
def _failing_as(path: Path, action: str) -> Iterator[None]:
    """Turn an OSError into SpoolError(path, 'action: reason'); the reason does not vary per
    report, so a caller can log a persistent failure once."""
    try:
        yield
    except OSError as exc:
        raise SpoolError(str(path), f"{action}: {describe(exc)}") from exc


def lock_spool(directory: Path) -> int:
    """Take the spool for this process: an exclusive flock on `<directory>/.lock`, held until
    the returned descriptor is closed (the kernel drops it when the process dies, even kill -9).

    SpoolError naming the directory if another agent holds it: two agents on one spool would
    hand out the same sequence numbers and delete each other's reports.
    """
    path = directory / ".lock"
    with _failing_as(directory, "cannot use spool directory"):
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 32).decode("ascii", errors="replace").strip()
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise SpoolError(
                str(directory), f"spool directory in use by another gpucap agent{by}"
            ) from exc
        raise SpoolError(str(path), f"cannot lock the spool: {describe(exc)}") from exc
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as exc:  # the lock is what matters; the pid is only for the message
        log.warning("cannot write the pid into %s: %s", path, describe(exc))
    return fd


class Spool:
    """Pending reports in sequence order, bounded to `max_reports` (heartbeats dropped first)."""

    def __init__(
        self, directory: Path, max_reports: int = 10_000, *, clock: Clock | None = None
    ) -> None:
        self.directory = directory
        self.max_reports = max_reports
        self._reports = directory / "reports"
        self._quarantine = directory / "quarantine"
        self._state = directory / "state.json"
        with _failing_as(directory, "cannot use spool directory"):
            self._reports.mkdir(parents=True, exist_ok=True)
            self._quarantine.mkdir(parents=True, exist_ok=True)
            for stale in self._reports.glob(".*.tmp"):
                stale.unlink()  # a write interrupted before its rename
            floor = seq_floor((clock or SystemClock()).now())
            state_seq, self.last_fingerprint = self._load_state(floor)
            entries = self._entries()
        # The pending index: seq -> file. `_order` (all pending seqs) and `_heartbeats` are
        # ascending; a seq that left the index stays in them until it reaches the front.
        self._files: dict[int, Path] = dict(entries)
        self._order: deque[int] = deque(seq for seq, _ in entries)
        self._heartbeats: deque[int] = deque(seq for seq, p in entries if ".h." in p.name)
        highest = max(self._files, default=0)
        self._next_seq = max(state_seq, highest + 1, floor)

    def _load_state(self, floor: int) -> tuple[int, str | None]:
        """(next_seq, last fingerprint) from state.json; 1 when it is missing or unreadable.

        Losing the state is safe because the caller never goes below the wall-clock floor;
        the spooled reports only ever raise the number further.
        """
        try:
            raw = json.loads(self._state.read_text(encoding="utf-8"))
            seq = raw["next_seq"]
            fingerprint = raw.get("last_fingerprint")
            if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
                raise ValueError(f"next_seq {seq!r} is not an integer from 1 to {MAX_SEQ}")
            return seq, fingerprint if isinstance(fingerprint, str) else None
        except FileNotFoundError:
            return 1, None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "spool state %s is unreadable (%s); moved to quarantine, sequence numbers "
                "continue from the wall-clock floor %d, above any used before",
                self._state,
                exc,
                floor,
            )
            self._quarantine_or_log(self._state, f"unreadable spool state: {exc}")
            return 1, None

    def _write_state(self) -> None:
        body = {"next_seq": self._next_seq, "last_fingerprint": self.last_fingerprint}
        atomic_write(self._state, json.dumps(body).encode())

    @staticmethod
    def _seq_of(name: str) -> int | None:
        head = name.split(".", 1)[0]
        return int(head) if head.isdigit() else None

    def _entries(self) -> list[tuple[int, Path]]:
        entries = []
        for path in self._reports.iterdir():
            if path.name.startswith("."):
                continue
            seq = self._seq_of(path.name)
            if seq is None:
                self._quarantine_or_log(path, "not a spool file name")
                continue
            entries.append((seq, path))
        return sorted(entries)

    def reserve(self) -> int:
        """The next sequence number, persisted as used before it is returned."""
        seq = self._next_seq
        if seq > MAX_SEQ:
            raise SpoolError(str(self._state), f"sequence numbers exhausted at {MAX_SEQ}")
        self._next_seq += 1  # not handed out again in this process even if the write fails
        with _failing_as(self._state, "cannot record the next sequence number"):
            self._write_state()
        return seq

    def put(self, seq: int, report: dict[str, Any], *, change: bool, fingerprint: str) -> bool:
        """Store a report durably; False if it was a heartbeat dropped because the spool is full.

        On SpoolError `last_fingerprint` is unchanged, so the next collection is reported as
        a change again; the report itself is either whole on disk (and will be sent) or absent.
        """
        with _failing_as(self._reports, "cannot store a report"):
            return self._put(seq, report, change=change, fingerprint=fingerprint)

    def _put(self, seq: int, report: dict[str, Any], *, change: bool, fingerprint: str) -> bool:
        if not self._reports.exists():
            self._reports.mkdir()  # recreated if it was removed
        held = len(self._files)
        if held >= self.max_reports:
            victim = self._oldest_heartbeat()
            if victim is not None:
                path = self._files[victim]
                path.unlink(missing_ok=True)
                self._forget(victim)
                _fsync_dir(self._reports)
                log.warning("spool full (%d reports): dropped oldest heartbeat %s", held, path.name)
            elif not change:
                log.warning("spool full of changes: heartbeat %d not stored", seq)
                self._write_state_with(fingerprint)
                return False
            else:
                log.error("spool over its bound (%d reports), keeping change report %d", held, seq)
        kind = "c" if change else "h"
        path = self._reports / f"{seq:020d}.{kind}.json"
        atomic_write(path, json.dumps(report, sort_keys=True).encode())
        self._remember(seq, path)
        self._write_state_with(fingerprint)
        return True

    def _remember(self, seq: int, path: Path) -> None:
        self._files[seq] = path
        for queue in (self._order, self._heartbeats) if ".h." in path.name else (self._order,):
            if queue and seq < queue[-1]:
                insort(queue, seq)  # only if put out of reserve order; never in the daemon
            else:
                queue.append(seq)

    def _forget(self, seq: int) -> None:
        self._files.pop(seq, None)

    def _oldest_heartbeat(self) -> int | None:
        while self._heartbeats and self._heartbeats[0] not in self._files:
            self._heartbeats.popleft()
        return self._heartbeats[0] if self._heartbeats else None

    def _write_state_with(self, fingerprint: str) -> None:
        """Persist the new fingerprint; in memory only once it is on disk."""
        before, self.last_fingerprint = self.last_fingerprint, fingerprint
        try:
            self._write_state()
        except OSError:
            self.last_fingerprint = before
            raise

    def oldest(self) -> Spooled | None:
        """The oldest pending report, reading only its file (corrupt ones are quarantined and
        the next is tried); None when the spool is empty. What the daemon sends next."""
        with _failing_as(self._reports, "cannot read the spooled reports"):
            while self._order:
                seq = self._order[0]
                path = self._files.get(seq)
                if path is None:
                    self._order.popleft()  # acknowledged, quarantined or dropped earlier
                    continue
                item = self._read(seq, path)
                if item is not None:
                    return item
            return None

    def pending(self) -> list[Spooled]:
        """Every pending report, oldest first, read from disk (O(n): for inspection and tests;
        sending uses `oldest`). Unreadable files are quarantined on the way."""
        with _failing_as(self._reports, "cannot read the spooled reports"):
            out = []
            for seq in sorted(self._files):
                item = self._read(seq, self._files[seq])
                if item is not None:
                    out.append(item)
            return out

    def _read(self, seq: int, path: Path) -> Spooled | None:
        """One spooled report; None (it leaves the index, quarantined) if corrupt or unreadable.

        A file that can be neither read nor moved aside raises OSError: the spool itself is
        failing, and the report stays where it is for the next attempt.
        """
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(report, dict) or report.get("seq") != seq:
                raise ValueError("not a report with the sequence number of its file name")
        except FileNotFoundError:
            log.warning("spooled report %s vanished from the spool", path.name)
            self._forget(seq)
            return None
        except (OSError, ValueError) as exc:
            self._quarantine_file(path, f"corrupt spool file: {exc}")
            self._forget(seq)
            return None
        return Spooled(seq, ".c." in path.name, path, report)

    def count(self) -> int:
        """Pending reports (from the index: no I/O)."""
        return len(self._files)

    def acknowledge(self, item: Spooled) -> None:
        """The ledger has the report: it leaves the spool (SpoolError: it stays, and is sent
        again later; the ledger then answers `duplicate`)."""
        with _failing_as(self._reports, "cannot remove a delivered report"):
            item.path.unlink(missing_ok=True)
            self._forget(item.seq)
            _fsync_dir(self._reports)

    def quarantine(self, item: Spooled, reason: str) -> None:
        """The ledger refused the report for good: keep it aside with the reason, never resend."""
        with _failing_as(self._quarantine, "cannot quarantine a rejected report"):
            self._quarantine_file(item.path, reason)
            self._forget(item.seq)

    def quarantined(self) -> list[Path]:
        return sorted(p for p in self._quarantine.iterdir() if not p.name.endswith(".reason"))

    def _quarantine_or_log(self, path: Path, reason: str) -> None:
        """Quarantine a file found broken while opening the spool; a failure is only logged."""
        try:
            self._quarantine_file(path, reason)
        except OSError as exc:
            log.error("cannot quarantine %s: %s", path, describe(exc))

    def _quarantine_file(self, path: Path, reason: str) -> None:
        """Move `path` to quarantine/ with a .reason file (OSError if it cannot be moved)."""
        target = self._quarantine / path.name
        n = 1
        while target.exists():
            target = self._quarantine / f"{path.name}.{n}"
            n += 1
        os.replace(path, target)
        log.error("quarantined %s: %s", path.name, reason)
        try:
            atomic_write(target.with_name(target.name + ".reason"), (reason + "\n").encode())
        except OSError as exc:  # the file is out of the queue; only its note is missing
            log.error("cannot write the reason for %s: %s", target, describe(exc))
