"""One partition's state (``consumer.partition_store``) on its own, no broker, no processor:
the undo log keeps each loan's committed image, rollback returns to the last commit, and the
changelog records it writes restore an identical partition."""

from __future__ import annotations

import numpy as np
import pytest

from consumer.partition_store import CHECKPOINT_KEY, PartitionStore, total_population
from models.features.state import LoanState


@pytest.fixture(scope="module")
def histories() -> dict[str, list[dict]]:
    """Each loan's events, in order, of a three-loan book."""
    from models.data.synthetic import generate_book

    by_loan: dict[str, list[dict]] = {}
    for event in generate_book(3, seed=1)[1]:
        by_loan.setdefault(event["loan_id"], []).append(event)
    return by_loan


def new_store(bundle, partition: int = 0) -> PartitionStore:
    from models.serving.segmenter import OnlineSegmenter

    return PartitionStore(partition, OnlineSegmenter.from_bundle(bundle))


def apply(store: PartitionStore, event: dict) -> LoanState:
    """What the processor does with one event: remember, then open or apply."""
    loan_id = event["loan_id"]
    state = store.states.get(loan_id)
    store.remember(loan_id, state)
    if state is None:
        state = store.states[loan_id] = LoanState.open(event)
    else:
        state.apply(event)
    store.events_applied += 1
    state.segment = store.segmenter.learn_predict(np.asarray(state.features()))
    state.risk_tier = "LOW"
    return state


def records(store: PartitionStore) -> dict[str, str]:
    # repr: a loan's record holds NaN (no due date yet), and NaN != NaN
    return {loan_id: repr(state.to_record()) for loan_id, state in store.states.items()}


def test_rollback_returns_to_the_last_commit(bundle, histories) -> None:
    (a, b, c) = sorted(histories)
    store = new_store(bundle)
    for event in histories[a][:3] + histories[b][:1]:
        apply(store, event)
    store.commit()
    assert not store.has_uncommitted and store.undo == {}
    committed, segmenter, applied = records(store), store.segmenter.to_json(), store.events_applied

    for event in histories[a][3:6] + histories[b][1:2] + histories[c][:2]:
        apply(store, event)
    assert store.has_uncommitted
    assert set(store.undo) == {a, b, c} and store.undo[c] is None  # c was opened meanwhile
    assert repr(store.undo[a].to_record()) == committed[a]  # the first image, not a later one
    assert records(store) != committed

    store.rollback()
    assert records(store) == committed  # c is gone, a and b are back
    assert store.segmenter.to_json() == segmenter and store.events_applied == applied
    assert not store.has_uncommitted
    assert sum(store.population()[1].values()) == len(store.states)  # gauges recounted


def test_changelog_records_restore_an_identical_partition(bundle, histories) -> None:
    (a, b, c) = sorted(histories)
    original = new_store(bundle, partition=4)
    for event in histories[a][:4] + histories[b][:2]:
        apply(original, event)
    first = original.changelog_records(now_ms=1)
    original.commit()
    for event in histories[a][4:5] + histories[c][:1]:
        apply(original, event)
    second = original.changelog_records(now_ms=2)  # only what changed since the commit
    original.commit()
    assert [key for key, _ in first] == [a.encode(), b.encode(), CHECKPOINT_KEY.encode()]
    assert [key for key, _ in second] == [a.encode(), c.encode(), CHECKPOINT_KEY.encode()]

    restored = new_store(bundle, partition=4)
    loans = sum(restored.restore(key, value) for key, value in first + second)
    restored.finish_restore()
    assert loans == 4  # loan states, not checkpoints
    assert records(restored) == records(original)
    assert restored.segmenter.to_json() == original.segmenter.to_json()
    assert restored.events_applied == original.events_applied
    assert restored.population()[1] == {"LOW": 3}  # counted from the restored loans
    assert not restored.has_uncommitted  # restored state is committed state

    restored.restore(b.encode(), None)  # a tombstone deletes the loan
    restored.restore(CHECKPOINT_KEY.encode(), None)  # a checkpoint tombstone changes nothing
    assert set(restored.states) == {a, c}
    with pytest.raises(ValueError, match="holds the state of loan"):
        restored.restore(b"someone-else", first[0][1])


def test_records_after_the_last_checkpoint_are_an_unfinished_unit_and_undone(
    bundle, histories
) -> None:
    """At least once, killed while a unit's changelog was flushed: some of its loan records
    are in the changelog, its checkpoint is not. The restore undoes them, so the state is the
    one the last checkpoint's input offset reflects and the redo is exact (ARCHITECTURE.md §8)."""
    (a, b, c) = sorted(histories)
    original = new_store(bundle, partition=4)
    for event in histories[a][:4] + histories[b][:2]:
        apply(original, event)
    first = original.changelog_records(now_ms=1, input_offset=6)
    original.commit()
    image = records(original)
    for event in histories[a][4:5] + histories[c][:1]:
        apply(original, event)
    second = original.changelog_records(now_ms=2, input_offset=8)
    assert [k for k, _ in second][-1] == CHECKPOINT_KEY.encode()
    torn = [*second[:-1], (b.encode(), None)]  # a's and c's new states, b's tombstone

    restored = new_store(bundle, partition=4)
    for key, value in first + torn:
        restored.restore(key, value)
    assert restored.finish_restore() == 3
    assert records(restored) == image and restored.restored_offset == 6
    assert restored.segmenter.to_json() == first_segmenter(first)
    assert not restored.has_uncommitted
    # The whole unit, checkpoint included: nothing undone.
    whole = new_store(bundle, partition=4)
    for key, value in first + second:
        whole.restore(key, value)
    assert whole.finish_restore() == 0 and whole.restored_offset == 8
    assert records(whole) == records(original)
    # No checkpoint at all (a changelog of loans only): nothing to undo, every loan kept.
    loans_only = new_store(bundle, partition=4)
    for key, value in first[:-1]:
        loans_only.restore(key, value)
    assert loans_only.finish_restore() == 0 and set(loans_only.states) == {a, b}


def first_segmenter(changelog: list[tuple[bytes, bytes | None]]) -> str:
    from schemas import AvroSerde

    (value,) = [v for k, v in changelog if k == CHECKPOINT_KEY.encode()]
    assert value is not None
    return AvroSerde("PartitionCheckpoint").decode(value)["clusterer_json"]


def test_total_population_adds_up_the_partitions(bundle, histories) -> None:
    (a, b, c) = sorted(histories)
    left, right = new_store(bundle, 0), new_store(bundle, 1)
    for event in histories[a][:2] + histories[b][:1]:
        apply(left, event)
    apply(right, histories[c][0])
    left.finish_restore()
    right.finish_restore()
    loans, segments, tiers = total_population([left, right])
    assert loans == 3 and tiers == {"LOW": 3} and sum(segments.values()) == 3


def test_a_legacy_loan_under_the_checkpoint_key_is_dropped_and_the_partition_restores(
    bundle, histories
) -> None:
    """Before loan ids were validated a loan could be called ``__partition__``; its state went
    under the checkpoint's key and every later restore of the partition failed."""
    from models.features.state_codec import LoanStateCodec
    from schemas import SchemaDecodeError

    source = new_store(bundle)
    for events in histories.values():
        for event in events:
            apply(source, event)
    first = next(iter(histories.values()))[0]
    legacy = LoanStateCodec().encode(LoanState.open({**first, "loan_id": CHECKPOINT_KEY}))
    written = source.changelog_records(now_ms=5)
    target = new_store(bundle)
    for key, value in [(CHECKPOINT_KEY.encode(), legacy), *written]:
        target.restore(key, value)
    target.finish_restore()
    assert CHECKPOINT_KEY not in target.states
    assert target.states.keys() == source.states.keys()
    assert target.segmenter.to_json() == source.segmenter.to_json()
    assert target.events_applied == source.events_applied
    with pytest.raises(SchemaDecodeError):  # anything else under the key still fails loudly
        target.restore(CHECKPOINT_KEY.encode(), b"\xc3\x01" + b"\x00" * 12)


def test_a_sealed_unit_is_kept_apart_from_the_next_one(bundle, histories) -> None:
    """Commit in the background (consumer.checkpoint): the unit committing is sealed while
    the next is processed; the next rolls back to the sealed unit's end, and the sealed one
    is then made final, or opened again and rolled back to the last commit."""
    (a, b, c) = sorted(histories)
    store = new_store(bundle)
    for event in histories[a][:2]:
        apply(store, event)
    store.commit()
    committed = records(store), store.segmenter.to_json(), store.events_applied
    for event in histories[a][2:4] + histories[b][:1]:  # the unit that will commit
        apply(store, event)
    store.record_recovery(10.0)
    store.seal()
    assert store.sealed and store.undo == {}
    sealed_end = records(store), store.segmenter.to_json(), store.events_applied
    for event in histories[a][4:5] + histories[c][:2]:  # the next unit
        apply(store, event)
    store.record_recovery(5.0)
    assert set(store.undo) == {a, c}  # its own first images: a as the sealed unit left it
    # A lookup sees the last commit: a's image from before the sealed unit, b absent.
    assert repr(store.committed_image(a).to_record()) == committed[0][a]
    assert store.committed_image(b) is None and store.committed_image(c) is None

    store.rollback()  # the next unit only
    assert (records(store), store.segmenter.to_json(), store.events_applied) == sealed_end
    store.unseal()  # the commit failed: the sealed unit is the open one again
    assert set(store.undo) == {a, b} and store.has_uncommitted
    store.rollback()
    assert (records(store), store.segmenter.to_json(), store.events_applied) == committed

    for event in histories[a][2:4]:  # again, and this time the commit lands
        apply(store, event)
    store.record_recovery(7.0)
    store.seal()
    apply(store, histories[b][0])
    assert store.commit_sealed() == 7.0 and not store.sealed
    assert set(store.undo) == {b}  # the next unit is still open
    assert store.commit() == 0.0 and not store.has_uncommitted


def test_one_unit_at_a_time_is_sealed_and_the_open_one_is_rolled_back_before_unsealing(
    bundle, histories
) -> None:
    (a, *_) = sorted(histories)
    store = new_store(bundle)
    apply(store, histories[a][0])
    store.seal()
    with pytest.raises(AssertionError, match="one commit in flight"):
        store.seal()
    apply(store, histories[a][1])
    with pytest.raises(AssertionError, match="roll the open unit back first"):
        store.unseal()
    with pytest.raises(AssertionError, match="made final first"):
        store.commit()
