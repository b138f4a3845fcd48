"""One input partition's state: its loans, its online segmenter, and what the open
transaction changed.

The state of a partition moves with the partition (DESIGN.md §5, Determinism): it is written
to the compacted changelog inside the scorer's transaction, restored from it before the
partition's input is processed, and rolled back when a transaction aborts. This class owns all
three so that the processor (``consumer.processor``) only decodes, applies and decides, and
the Kafka side (``consumer.checkpoint``, ``consumer.recovery``) only moves records.

- Undo log: each loan touched since the last :meth:`commit` keeps its committed image (None
  if it was opened meanwhile), the segmenter its committed JSON; :meth:`rollback` restores
  both after an aborted transaction.
- Decisions: the partition's last :data:`DECISION_HISTORY` committed ``StrategyChanged``
  records (``decisions``, for ``GET /loans``, ``consumer.lookup``): :meth:`record_changes`
  holds a batch's until :meth:`commit`, :meth:`rollback` drops them. Memory, not the
  changelog: the next owner of the partition starts with none.
- Changelog: :meth:`changelog_records` gives the changed loans' ``LoanState`` records plus the
  partition's ``PartitionCheckpoint`` under ``__partition__`` (docs/INTERNALS.md, changelog
  keys); :meth:`restore` applies one such record, last write wins.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable

from consumer.outputs import StrategyChanged
from models.features.state import LoanState
from models.features.state_codec import LoanStateCodec
from models.serving.contracts import Segmenter
from schemas import AvroSerde, SchemaDecodeError

# Internal keys start with "_", which no valid loan id does (models.features.loan_id), so
# they never collide with a loan (ARCHITECTURE.md §8). The key is the one changelogs have
# always used, so every existing changelog restores.
CHECKPOINT_KEY = "__partition__"
_CHECKPOINT_KEY_BYTES = CHECKPOINT_KEY.encode()
# Strategy changes kept per partition for the loan lookup: bounded (~1 KB each), not per loan.
DECISION_HISTORY = 256


def _segmenter_from_json(text: str) -> Segmenter:
    from models.serving.segmenter import OnlineSegmenter

    return OnlineSegmenter.from_json(text)


class PartitionStore:
    """Loans, segmenter and undo log of one partition; see the module docstring.

    ``states`` and ``undo`` are plain dicts because the compiled event kernel fills them in
    place (``models.features._event_kernel``); everything else goes through methods."""

    __slots__ = (
        "_checkpoint_serde",
        "_committed_events_applied",
        "_committed_segmenter",
        "_pending_decisions",
        "_state_codec",
        "by_segment",
        "by_tier",
        "decisions",
        "events_applied",
        "partition",
        "segmenter",
        "states",
        "undo",
    )

    def __init__(self, partition: int, segmenter: Segmenter) -> None:
        self.partition = partition
        self.states: dict[str, LoanState] = {}
        self.undo: dict[str, LoanState | None] = {}  # committed image of each touched loan
        self.segmenter = segmenter
        self.events_applied = 0
        # Loans per current segment / tier, kept up to date per decision (the gauges must not
        # cost a scan of a million loans every scrape).
        self.by_segment: Counter[str] = Counter()
        self.by_tier: Counter[str] = Counter()
        self._state_codec = LoanStateCodec()
        self._checkpoint_serde = AvroSerde("PartitionCheckpoint")
        self._committed_segmenter = segmenter.to_json()
        self._committed_events_applied = 0
        self.decisions: deque[StrategyChanged] = deque(maxlen=DECISION_HISTORY)
        self._pending_decisions: list[StrategyChanged] = []

    # -- the undo log ---------------------------------------------------------------------------
    def remember(self, loan_id: str, state: LoanState | None) -> None:
        """Keep the committed image of a loan about to change (only its first change counts)."""
        if loan_id not in self.undo:
            self.undo[loan_id] = None if state is None else state.copy()

    @property
    def has_uncommitted(self) -> bool:
        return bool(self.undo) or self.events_applied != self._committed_events_applied

    def record_changes(self, changes: list[StrategyChanged]) -> None:
        """A batch's strategy changes: part of :attr:`decisions` once they commit."""
        self._pending_decisions += changes

    def commit(self) -> None:
        """The transaction that carried this partition's outputs committed."""
        self.undo.clear()
        # After the undo log: a lookup between the two (it does not take the loop's lock for
        # commits) sees the committed state with its history one commit behind, never ahead.
        if self._pending_decisions:
            self.decisions.extend(self._pending_decisions)
            self._pending_decisions.clear()
        self._committed_segmenter = self.segmenter.to_json()
        self._committed_events_applied = self.events_applied

    def rollback(self) -> None:
        """The transaction aborted: back to the state of the last commit."""
        for loan_id, committed in self.undo.items():
            if committed is None:
                self.states.pop(loan_id, None)
            else:
                self.states[loan_id] = committed
        self.undo.clear()
        self._pending_decisions.clear()
        self.segmenter = _segmenter_from_json(self._committed_segmenter)
        self.events_applied = self._committed_events_applied
        self._recount()

    # -- the changelog --------------------------------------------------------------------------
    def changelog_records(self, now_ms: int) -> list[tuple[bytes, bytes | None]]:
        """(key, value) for every loan changed since the last commit (None: it was opened and
        rolled away, a tombstone), then the partition's checkpoint."""
        encode, states = self._state_codec.encode, self.states
        records: list[tuple[bytes, bytes | None]] = []
        for loan_id in self.undo:
            state = states.get(loan_id)
            records.append((loan_id.encode(), None if state is None else encode(state)))
        records.append((_CHECKPOINT_KEY_BYTES, self.checkpoint_value(now_ms)))
        return records

    def checkpoint_value(self, now_ms: int) -> bytes:
        """The segmenter's parameters as plain JSON (never pickle from a topic, DESIGN.md §5)."""
        return self._checkpoint_serde.encode(
            {
                "partition": self.partition,
                "clusterer_json": self.segmenter.to_json(),
                "events_applied": self.events_applied,
                "updated_at": now_ms,
            }
        )

    def restore(self, key: bytes | None, value: bytes | None) -> bool:
        """Apply one changelog record (last write wins). True if it was a loan state."""
        if key == _CHECKPOINT_KEY_BYTES:
            if value is not None and self._restore_checkpoint(value):
                self.commit()
            return False
        loan_id = key.decode() if key else ""
        if value is None:
            self.states.pop(loan_id, None)
            return False
        state = self._state_codec.decode(value)
        if state.loan_id != loan_id:
            raise ValueError(f"changelog key {loan_id!r} holds the state of loan {state.loan_id!r}")
        previous = self.states.get(loan_id)
        if previous is not None:  # the dict keeps its first key object: share that one
            state.loan_id = previous.loan_id
        self.states[state.loan_id] = state  # one id string per loan: key and state share it
        return True

    def _restore_checkpoint(self, value: bytes) -> bool:
        """Apply a record under the checkpoint key; False for a legacy loan state there."""
        try:
            checkpoint = self._checkpoint_serde.decode(value)
        except SchemaDecodeError:
            # Before loan ids were validated a loan could be called "__partition__", and its
            # state went under the checkpoint's key. Such a loan's events are dead-lettered
            # now (invalid_loan_id), so its state is dropped and the partition restores; the
            # transaction that wrote it wrote the real checkpoint after it.
            self._state_codec.decode(value)  # anything else under this key still fails
            return False
        self.segmenter = _segmenter_from_json(checkpoint["clusterer_json"])
        self.events_applied = checkpoint["events_applied"]
        return True

    def finish_restore(self) -> None:
        """Everything restored is committed by definition; the gauges count it."""
        self.commit()
        self._recount()

    # -- summaries ------------------------------------------------------------------------------
    def population(self) -> tuple[Counter[str], Counter[str]]:
        """Loans per current segment and per current tier."""
        return self.by_segment, self.by_tier

    def _recount(self) -> None:
        self.by_segment = Counter(s.segment for s in self.states.values() if s.segment)
        self.by_tier = Counter(s.risk_tier for s in self.states.values() if s.risk_tier)


def total_population(
    stores: Iterable[PartitionStore],
) -> tuple[int, dict[str, int], dict[str, int]]:
    """(loans, loans per segment, loans per tier) over ``stores``, for the gauges."""
    loans, segments, tiers = 0, Counter[str](), Counter[str]()
    for store in stores:
        by_segment, by_tier = store.population()
        loans += len(store.states)
        segments.update(by_segment)
        tiers.update(by_tier)
    return loans, dict(segments), dict(tiers)
