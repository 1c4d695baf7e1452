"""The group committer: batches form while a write is in flight, each caller gets its own answer,
a failing write fails only its batch, and close answers what is queued."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from gpucap.ledger.batcher import GroupCommitter


class Writer:
    """Records the batches it is given; the first write waits until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(batch))
        if len(self.batches) == 1:
            self.entered.set()
            self.release.wait(10)
        if 13 in batch and len(batch) == 1:
            raise RuntimeError("the database went away")
        return [ValueError(f"odd {x}") if x % 2 else x * 10 for x in batch]


def test_reports_queued_during_a_write_share_the_next_one() -> None:
    writer = Writer()
    committer = GroupCommitter(writer, max_batch=4)
    first = committer.submit(0)
    assert writer.entered.wait(10)
    queued = [committer.submit(x) for x in (2, 4, 6, 8, 10, 12)]
    writer.release.set()
    assert first.result(10) == 0
    assert [f.result(10) for f in queued] == [20, 40, 60, 80, 100, 120]
    assert writer.batches == [[0], [2, 4, 6, 8], [10, 12]]  # at most max_batch each
    committer.close()


def test_each_caller_gets_its_own_answer_and_a_failed_write_fails_its_batch() -> None:
    writer = Writer()
    writer.release.set()
    committer = GroupCommitter(writer)
    assert committer.submit(2).result(10) == 20
    odd = committer.submit(3)
    with pytest.raises(ValueError, match="odd 3"):
        odd.result(10)
    with pytest.raises(RuntimeError, match="went away"):
        committer.submit(13).result(10)
    assert committer.submit(4).result(10) == 40  # the writer thread lives on
    committer.close()


def test_close_answers_what_is_queued_and_a_later_submit_starts_again() -> None:
    writer = Writer()
    committer = GroupCommitter(writer)
    first = committer.submit(0)
    assert writer.entered.wait(10)
    queued = [committer.submit(x) for x in (2, 4)]
    closer = threading.Thread(target=committer.close)
    closer.start()
    writer.release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert [first.result(0), *(f.result(0) for f in queued)] == [0, 20, 40]
    assert committer.submit(6).result(10) == 60
    committer.close()
