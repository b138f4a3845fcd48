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
- A committing generation (:meth:`seal`): while the loop processes the next unit, the unit
  whose commit is in flight (``consumer.checkpoint``, "commit in the background") keeps its
  undo log, held decisions and recovered money apart. The open unit then rolls back to the
  sealed unit's end (:meth:`rollback`); :meth:`commit_sealed` makes the sealed unit final;
  :meth:`unseal` puts it back as the open unit (its commit failed: it is rolled back or
  retried as if it had never been sealed).
- Decisions: the partition's last :data:`DECISION_HISTORY` committed ``StrategyChanged``
  records (``decisions``, for ``GET /loans``, ``consumer.lookup``): :meth:`record_changes`
  holds a batch's until :meth:`commit`, :meth:`rollback` drops them. Memory, not the
  changelog: the next owner of the partition starts with none.
- Recovered money: the ``amount_paid`` of the payments after a write-off applied in the open
  transaction (:meth:`record_recovery`); :meth:`commit` returns it (the scorer counts it in
  ``loanrec_recovered_after_write_off_total`` only then), :meth:`rollback` drops it, so an
  aborted and redone transaction counts its recoveries once.
- Changelog: :meth:`changelog_records` gives the changed loans' ``LoanState`` records plus the
  partition's ``PartitionCheckpoint`` under ``__partition__`` (docs/INTERNALS.md, changelog
  keys); :meth:`restore` applies one such record, last write wins. The checkpoint (v3) carries
  the input offset the state reflects, the offset committed with it; after a restore it is
  :attr:`restored_offset`, which ``consumer.recovery`` checks against the group's committed
  offset before the partition resumes (ARCHITECTURE.md §8).
- Lifecycle (ARCHITECTURE.md §8): ``clock`` is the partition's event time, the largest
  ``occurred_at`` of an event applied on it, carried in the checkpoint. A closed loan whose last
  event is more than ``retention_ms`` behind it has left the partition: the processor treats
  it as absent from then on (:meth:`expired`), whenever it is removed, so decisions do not
  depend on when :meth:`sweep` runs; the sweep (once per commit, and per batch in the batch
  reference) removes such loans with a heap of closed loans by expiry, so it costs nothing
  when none is due, and the changelog gets their tombstones.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from collections.abc import Iterable
from operator import attrgetter
from typing import NamedTuple

from consumer.outputs import StrategyChanged
from models.features.state import CLOSED, LAST_EVENT_AT, LoanState
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
DAY_MS = 86_400_000
# Long enough for late recoveries after a write-off (issue #12 item 5), short enough that
# closed loans do not grow memory and the changelog without bound.
DEFAULT_CLOSED_RETENTION_DAYS = 180.0
NO_CLOCK = -math.inf  # no event applied on the partition yet
_LABELS = attrgetter("_labels")  # LoanState's interned (strategy, risk_tier, segment)


class _Sealed(NamedTuple):
    """A unit whose commit is in flight: its undo log and held outputs, and what was
    committed before it (:meth:`PartitionStore.seal`)."""

    undo: dict[str, LoanState | None]
    decisions: list[StrategyChanged]
    recovered: float
    segmenter: str
    events_applied: int
    clock: float


def _segmenter_from_json(text: str) -> Segmenter:
    from models.serving.segmenter import OnlineSegmenter

    return OnlineSegmenter.from_json(text)


class PartitionStore:
    """Loans, segmenter and undo log of one partition; see the module docstring.

    ``states`` and ``undo`` are plain dicts because the compiled event kernel fills them in
    place (``models.features._event_kernel``); everything else goes through methods."""

    __slots__ = (
        "_checkpoint_serde",
        "_committed_clock",
        "_committed_events_applied",
        "_committed_segmenter",
        "_expiring",
        "_pending_decisions",
        "_pending_recovered",
        "_sealed",
        "_state_codec",
        "_unfinished",
        "by_segment",
        "by_tier",
        "clock",
        "decisions",
        "events_applied",
        "partition",
        "restored_checkpoint",
        "restored_offset",
        "retention_ms",
        "segmenter",
        "states",
        "undo",
    )

    def __init__(
        self,
        partition: int,
        segmenter: Segmenter,
        retention_ms: float = DEFAULT_CLOSED_RETENTION_DAYS * DAY_MS,
    ) -> None:
        self.partition = partition
        self.retention_ms = float(retention_ms)
        self.clock = self._committed_clock = NO_CLOCK
        # (expires at, loan id) of closed loans; an entry may be stale (a recovery moved the
        # loan's last event on, or the id was re-opened after expiry): the sweep re-checks.
        self._expiring: list[tuple[float, str]] = []
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
        self._pending_recovered = 0.0
        self._sealed: _Sealed | None = None  # the unit whose commit is in flight, if any
        # What the last checkpoint restored from the changelog said: whether there was one,
        # and the input offset it reflects (None: none, or a v1/v2 checkpoint without one).
        self.restored_checkpoint = False
        self.restored_offset: int | None = None
        self._unfinished = 0  # loan records restored since the last checkpoint restored

    # -- the undo log ---------------------------------------------------------------------------
    def remember(self, loan_id: str, state: LoanState | None) -> None:
        """Keep the committed image of a loan about to change (only its first change counts)."""
        if loan_id not in self.undo:
            self.undo[loan_id] = None if state is None else state.copy()

    @property
    def has_uncommitted(self) -> bool:
        return (
            bool(self.undo)
            or self._sealed is not None
            or self.events_applied != self._committed_events_applied
        )

    def committed_image(self, loan_id: str) -> LoanState | None:
        """The loan as last committed (None: not in the committed state), whatever the open
        and the committing unit changed since."""
        # Lookups run on the HTTP server's threads, and commits do not take their lock: the
        # open undo log is read before the sealed one, and seal/unseal write them in the
        # other order, so a seal between the two reads finds the image in either.
        undo, sealed = self.undo, self._sealed
        if sealed is not None and loan_id in sealed.undo:
            return sealed.undo[loan_id]
        return undo[loan_id] if loan_id in undo else self.states.get(loan_id)

    def seal(self) -> None:
        """The open unit's commit goes on in the background: keep its changes apart, so that
        the next unit rolls back to this one's end and this one can still be made final
        (:meth:`commit_sealed`) or opened again (:meth:`unseal`)."""
        assert self._sealed is None, "one commit in flight at a time"
        self._sealed = _Sealed(
            self.undo,
            self._pending_decisions,
            self._pending_recovered,
            self._committed_segmenter,
            self._committed_events_applied,
            self._committed_clock,
        )
        # The compiled kernel fills ``undo`` in place, and reads the attribute per batch.
        self.undo = {}
        self._pending_decisions = []
        self._pending_recovered = 0.0
        self._committed_segmenter = self.segmenter.to_json()
        self._committed_events_applied = self.events_applied
        self._committed_clock = self.clock

    @property
    def sealed(self) -> bool:
        return self._sealed is not None

    def commit_sealed(self) -> float:
        """The sealed unit committed; returns the money it recovered after write-offs."""
        sealed, self._sealed = self._sealed, None
        assert sealed is not None
        if sealed.decisions:
            self.decisions.extend(sealed.decisions)
        return sealed.recovered

    def unseal(self) -> None:
        """The sealed unit's commit failed: it is the open unit again, exactly as before
        :meth:`seal`. The unit opened since must be rolled back first (:meth:`rollback`)."""
        assert not self.undo and not self._pending_decisions, "roll the open unit back first"
        sealed = self._sealed
        assert sealed is not None
        self.undo = sealed.undo  # before the seal goes: a lookup finds the image meanwhile
        self._sealed = None
        self._pending_decisions = sealed.decisions
        self._pending_recovered = sealed.recovered
        self._committed_segmenter = sealed.segmenter
        self._committed_events_applied = sealed.events_applied
        self._committed_clock = sealed.clock

    def record_changes(self, changes: list[StrategyChanged]) -> None:
        """A batch's strategy changes: part of :attr:`decisions` once they commit."""
        self._pending_decisions += changes

    def record_recovery(self, amount_paid: float) -> None:
        """A payment after a write-off was applied: final once its transaction commits."""
        self._pending_recovered += amount_paid

    def commit(self) -> float:
        """The transaction that carried this partition's outputs committed; returns the money
        it recovered after write-offs (what :meth:`record_recovery` held since the last
        commit or rollback)."""
        assert self._sealed is None, "the commit in flight is made final first"
        self.undo.clear()
        # After the undo log: a lookup between the two (it does not take the loop's lock for
        # commits) sees the committed state with its history one commit behind, never ahead.
        if self._pending_decisions:
            self.decisions.extend(self._pending_decisions)
            self._pending_decisions.clear()
        self._committed_segmenter = self.segmenter.to_json()
        self._committed_events_applied = self.events_applied
        self._committed_clock = self.clock
        recovered, self._pending_recovered = self._pending_recovered, 0.0
        return recovered

    def rollback(self) -> None:
        """The transaction aborted: back to the state of the last commit (with a unit sealed,
        to the sealed unit's end)."""
        for loan_id, committed in self.undo.items():
            if committed is None:
                self.states.pop(loan_id, None)
            else:
                self.states[loan_id] = committed
                if committed.closed:  # the aborted sweep may have popped its heap entry
                    self.index_closed(committed)
        self.clock = self._committed_clock
        self.undo.clear()
        self._pending_decisions.clear()
        self._pending_recovered = 0.0
        self.segmenter = _segmenter_from_json(self._committed_segmenter)
        self.events_applied = self._committed_events_applied
        self._recount()

    # -- the lifecycle: closed loans leave after the retention ---------------------------------
    def advance_clock(self, event_time: float) -> None:
        if event_time > self.clock:
            self.clock = event_time

    def expired(self, state: LoanState, event_time: float) -> bool:
        """Has closed ``state`` left the partition by the time of an event at ``event_time``
        (the clock counts that event too)? Strictly more than the retention since its last
        applied event (its close, or its latest recovery after a write-off)."""
        clock = event_time if event_time > self.clock else self.clock
        return state.closed and clock - state[LAST_EVENT_AT] > self.retention_ms

    def index_closed(self, state: LoanState) -> None:
        """Put a closed loan in the sweep's heap (again: duplicates are harmless)."""
        heapq.heappush(self._expiring, (state[LAST_EVENT_AT] + self.retention_ms, state.loan_id))

    def index_closed_states(self, states: Iterable[LoanState]) -> None:
        """Index the closed ones among ``states`` (a batch's applied states)."""
        for state in states:
            if state[CLOSED]:
                self.index_closed(state)

    def remove(self, loan_id: str) -> None:
        """A loan leaves the partition (undoable; a tombstone in the changelog at commit)."""
        state = self.states.get(loan_id)
        if state is None:
            return
        self.remember(loan_id, state)
        del self.states[loan_id]
        if state.risk_tier is not None:
            self.by_tier[state.risk_tier] -= 1
        if state.segment is not None:
            self.by_segment[state.segment] -= 1

    def sweep(self) -> int:
        """Remove every closed loan past the retention at the current clock; returns how many.
        O(1) when none is due (a heap peek), so it runs at every commit."""
        heap, removed = self._expiring, 0
        while heap and heap[0][0] < self.clock:
            _, loan_id = heapq.heappop(heap)
            state = self.states.get(loan_id)
            if state is None or not state.closed:
                continue  # gone already, or the id was opened again after it expired
            if self.clock - state[LAST_EVENT_AT] > self.retention_ms:
                self.remove(loan_id)
                removed += 1
            else:  # a recovery moved its last event on: due later
                self.index_closed(state)
        return removed

    # -- the changelog --------------------------------------------------------------------------
    def changelog_records(
        self, now_ms: int, input_offset: int | None = None
    ) -> list[tuple[bytes, bytes | None]]:
        """(key, value) for every loan changed since the last commit (None: it was opened and
        rolled away, or it left after the closed-loan retention: a tombstone), then the
        partition's checkpoint, which records ``input_offset``: the next input offset the
        state reflects, i.e. the one committed in the same unit (``consumer.checkpoint``).
        Sweeps first, so the tombstones go in the same transaction as the input offsets that
        moved the clock past the loans' expiry."""
        self.sweep()
        encode, states = self._state_codec.encode, self.states
        records: list[tuple[bytes, bytes | None]] = []
        for loan_id in self.undo:
            state = states.get(loan_id)
            records.append((loan_id.encode(), None if state is None else encode(state)))
        records.append((_CHECKPOINT_KEY_BYTES, self.checkpoint_value(now_ms, input_offset)))
        return records

    def checkpoint_value(self, now_ms: int, input_offset: int | None = None) -> bytes:
        """The segmenter's parameters as plain JSON (never pickle from a topic, DESIGN.md §5),
        the event-time clock and the input offset the state reflects."""
        return self._checkpoint_serde.encode(
            {
                "partition": self.partition,
                "clusterer_json": self.segmenter.to_json(),
                "events_applied": self.events_applied,
                "updated_at": now_ms,
                "event_time": None if self.clock == NO_CLOCK else int(self.clock),
                "input_offset": input_offset,
            }
        )

    def restore(self, key: bytes | None, value: bytes | None) -> bool:
        """Apply one changelog record (last write wins). True if it was a loan state."""
        if key == _CHECKPOINT_KEY_BYTES:
            if value is not None and self._restore_checkpoint(value):
                self.commit()
                self._unfinished = 0
            return False
        loan_id = key.decode() if key else ""
        states = self.states
        previous = states.get(loan_id)
        if self.restored_checkpoint:  # undone by finish_restore unless a checkpoint follows
            if loan_id not in self.undo:  # remember(), inlined: once per changelog record
                self.undo[loan_id] = None if previous is None else previous.copy()
            self._unfinished += 1
        if value is None:
            if previous is not None:
                del states[loan_id]
            return False
        state = self._state_codec.decode(value)
        if state.loan_id != loan_id:
            raise ValueError(f"changelog key {loan_id!r} holds the state of loan {state.loan_id!r}")
        if previous is not None:  # the dict keeps its first key object: share that one
            state.loan_id = previous.loan_id
        states[state.loan_id] = state  # one id string per loan: key and state share it
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
        event_time = checkpoint.get("event_time")  # None: no event yet, or a v1 checkpoint
        self.clock = NO_CLOCK if event_time is None else float(event_time)
        self.restored_checkpoint = True
        self.restored_offset = checkpoint.get("input_offset")  # None: a v1/v2 checkpoint
        return True

    def finish_restore(self) -> int:
        """Everything restored is committed by definition; the gauges count it. The closed
        loans restored go back into the sweep's heap (the next commit removes the due ones:
        their expiry is already in force, :meth:`expired`). Returns how many loan records
        after the last checkpoint were undone.

        Every unit writes a partition's changed loans, then its checkpoint, so records after
        the last checkpoint are a unit that never finished: an at-least-once scorer killed
        while its changelog was being flushed (exactly once never shows them: read_committed).
        They are undone, so the state is exactly the one the checkpoint's input offset
        reflects and the unit is redone in full (ARCHITECTURE.md §8); kept, the redo would
        find some of its loans ahead (their events dropped as duplicates, not scored, so the
        segmenter would not learn them again as it did the first time). Loans before the
        first checkpoint are never undone: a changelog without any keeps them all."""
        unfinished, self._unfinished = self._unfinished, 0
        if unfinished:
            self.rollback()
        self.commit()
        self._expiring.clear()
        self.index_closed_states(self.states.values())
        self._recount()
        return unfinished

    # -- summaries ------------------------------------------------------------------------------
    def population(self) -> tuple[Counter[str], Counter[str]]:
        """Loans per current segment and per current tier."""
        return self.by_segment, self.by_tier

    def _recount(self) -> None:
        """Loans per segment and per tier, from one count of the states' shared (strategy,
        tier, segment) triples (a few hundred at most): a restore's cost was ~8% two passes
        reading the ``segment`` and ``risk_tier`` properties. Same counts and key order."""
        by_segment, by_tier = Counter[str](), Counter[str]()
        for (_, tier, segment), count in Counter(map(_LABELS, self.states.values())).items():
            if segment:
                by_segment[segment] += count
            if tier:
                by_tier[tier] += count
        self.by_segment, self.by_tier = by_segment, by_tier


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
