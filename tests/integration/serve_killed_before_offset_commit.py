"""`loan-recovery serve`, SIGKILLed by itself between an at-least-once unit's flush and its
offset commit (ARCHITECTURE.md §8): the crash that leaves the changelog's checkpoint ahead
of the group's committed offset. Run as ``python this-file KILL_AFTER serve ...`` by
``test_stream_restore_check``; not a test module (pytest collects only ``test_*.py``).

The kill comes at the first offset commit that both carries at least ``KILL_AFTER``
input records in total (so the input is well under way) and moves a partition that already
has a committed offset on (so the restore finds a checkpoint ahead of a committed offset,
not only ahead of none). By then the unit's outputs and changelog records are acknowledged
(``AtLeastOnce._commit`` flushed them); its offsets are never committed. Before dying it
prints one line, ``kill_before_offset_commit {json}``, with the offsets it did not commit
and the ones committed before.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable

from confluent_kafka import TopicPartition

from consumer.checkpoint import AtLeastOnce
from loan_recovery.cli import app

KILL_AFTER = int(sys.argv.pop(1)) if __name__ == "__main__" else 0
_committed: dict[int, int] = {}  # what this process's earlier units committed
_unit: list[dict[int, int]] = [{}]  # the offsets of the unit being committed
_commit = AtLeastOnce._commit
_retrying = AtLeastOnce._retrying


def _commit_recording(self: AtLeastOnce, offsets: list[TopicPartition]) -> None:
    _unit[0] = {tp.partition: tp.offset for tp in offsets}
    _commit(self, offsets)
    _committed.update(_unit[0])


def _retrying_or_killed(
    self: AtLeastOnce,
    what: str,
    call: Callable[[float], object],
    timeout_s: float,
    stuck_after_s: float | None = None,
) -> object:
    unit = _unit[0]
    if (
        what == "commit offsets"
        and sum({**_committed, **unit}.values()) >= KILL_AFTER
        and any(p in _committed and unit[p] > _committed[p] for p in unit)
    ):
        report = {"not_committed": unit, "committed": _committed}
        print("kill_before_offset_commit", json.dumps(report), file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return _retrying(self, what, call, timeout_s, stuck_after_s)


AtLeastOnce._commit = _commit_recording  # type: ignore[method-assign]
AtLeastOnce._retrying = _retrying_or_killed  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = "loan-recovery"
    app()
