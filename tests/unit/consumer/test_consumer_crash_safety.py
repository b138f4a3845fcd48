"""A batch is committed whole or aborted (ARCHITECTURE.md §8): an unexpected exception in the
loop -- a bug, a MemoryError, a reloaded bundle that fails to predict -- aborts the open
transaction, and neither the revoke callback that ``consumer.close()`` runs nor the
checkpoint's close commits or flushes anything. On fakes, the real ``ScorerApp`` loop;
tests/integration/test_stream_crash.py checks the same on a real broker."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from test_consumer_recovery import EV, Scorer

from consumer.app import ScorerApp
from consumer.errors import FatalError
from consumer.partitioning import partition_for
from models.data.synthetic import generate_book
from schemas import AvroSerde


class FakeMessage:
    def __init__(self, partition: int, offset: int, key: bytes, value: bytes) -> None:
        self._p, self._o, self._k, self._v = partition, offset, key, value

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes:
        return self._k

    def value(self) -> bytes:
        return self._v


class FailingModel:
    """The real bundle, except that ``predict_proba`` raises ``error`` from its ``nth`` call."""

    def __init__(self, bundle: Any, nth: int, error: BaseException) -> None:
        self._bundle, self.nth, self.error, self.calls = bundle, nth, error, 0

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls >= self.nth:
            raise self.error
        return self._bundle.predict_proba(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bundle, name)


class LoopRig(ScorerApp):
    """``ScorerApp`` whose clients are the fakes of ``test_consumer_recovery.Scorer``; the group
    consumer hands out ``batches`` (one per consume call) and revokes on close, as
    librdkafka's does."""

    def __init__(self, bundle: Any, policy: Any, batches: list[list[FakeMessage]]) -> None:
        self.rig = Scorer(bundle, policy)
        super().__init__(self.rig.checkpoint.config, bundle, policy, self.rig.metrics)
        self.errors = self.rig.errors
        self.batches = batches
        consumer = self.rig.consumer
        consumer.consume = self._consume  # type: ignore[attr-defined]
        consumer.close = self._close_consumer  # type: ignore[attr-defined]
        consumer.get_watermark_offsets = lambda tp, cached: (0, 0)  # type: ignore[attr-defined]
        consumer.position = lambda tps: tps  # type: ignore[attr-defined]

    def _start(self) -> tuple[Any, Any]:
        rig = self.rig
        rig.assign(0, 1)
        self._consumer, self._recovery, self._checkpoint = (
            rig.consumer,  # type: ignore[assignment]
            rig.recovery,
            rig.checkpoint,
        )
        return rig.recovery, rig.checkpoint

    def _consume(self, n: int, timeout: float) -> list[FakeMessage]:
        if not self.batches:
            self.stopping = True
            return []
        return self.batches.pop(0)

    def _close_consumer(self) -> None:
        self.rig.revoke(0, 1)


def batches_of(per_batch: int) -> list[list[FakeMessage]]:
    """A small book's events on two partitions as the producer partitions them."""
    encode = AvroSerde("LoanEvent").encode
    next_offset = [0, 0]
    messages = []
    for event in generate_book(6, seed=3)[1]:
        key = event["loan_id"].encode()
        p = partition_for(key, 2)
        messages.append(FakeMessage(p, next_offset[p], key, encode(event)))
        next_offset[p] += 1
    return [messages[i : i + per_batch] for i in range(0, len(messages), per_batch)]


@pytest.mark.parametrize(
    "error", [RuntimeError("predict_proba failed"), MemoryError()], ids=["bug", "memory"]
)
def test_an_exception_mid_batch_aborts_and_revoke_and_close_commit_nothing(
    bundle, policy, error: BaseException
) -> None:
    app = LoopRig(FailingModel(bundle, 1, error), policy, batches_of(8))
    with pytest.raises(type(error)):
        app.run()
    producer = app.rig.producer.methods()
    assert "abort_transaction" in producer
    assert "send_offsets_to_transaction" not in producer  # no input offset moved on
    assert "commit_transaction" not in producer and "flush" not in producer
    assert app.rig.recovery.parked == {}  # nothing committed, so nothing may be reused
    with pytest.raises(FatalError, match=type(error).__name__):
        app.errors.raise_if_fatal()


@pytest.mark.parametrize("background", [True, False], ids=["background", "on-the-loop"])
def test_a_failure_after_commits_keeps_exactly_the_committed_offsets(
    bundle, policy, background: bool
) -> None:
    batches = batches_of(8)
    assert len(batches) >= 3
    app = LoopRig(FailingModel(bundle, 3, RuntimeError("bad bundle")), policy, list(batches))
    checkpoint = app.rig.checkpoint
    checkpoint.config = dataclasses.replace(checkpoint.config, background_commit=background)
    checkpoint.due = lambda caught_up=False: checkpoint.open  # type: ignore[method-assign]  # commit every batch
    with pytest.raises(RuntimeError, match="bad bundle"):
        app.run()
    calls = app.rig.producer.calls
    sent = [args[0] for method, args in calls if method == "send_offsets_to_transaction"]
    assert [m for m, _ in calls].count("commit_transaction") == len(sent) == 2
    # The two batches scored before the failing one, and nothing of the third.
    expected: dict[int, int] = {}
    for message in batches[0] + batches[1]:
        expected[message.partition()] = message.offset() + 1
    last = {tp.partition: tp.offset for offsets in sent for tp in offsets if tp.topic == EV}
    assert last == expected
    # Nothing of the third batch commits: on the loop, its transaction began and is aborted;
    # in the background, it never began (the second unit was committing) and its outputs,
    # held, are dropped.
    methods = [m for m, _ in calls]
    after = methods[len(methods) - methods[::-1].index("commit_transaction") :]
    assert after == ([] if background else ["begin_transaction", "abort_transaction"])
