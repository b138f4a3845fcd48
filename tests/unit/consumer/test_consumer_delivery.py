"""Delivery errors without a broker (issue #12, item 6): which failures are retried, which
dead-letter the record at fault and which stop the scorer with its fix -- the pure
classification of ``consumer.delivery`` and what ``consumer.checkpoint`` does with it, on the
fakes of test_consumer_checkpoint.py. tests/integration/test_stream_delivery_errors.py checks
the same on a real broker."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError
from test_consumer_checkpoint import TOPICS, Rig, failure

from consumer.checkpoint import AtLeastOnce, ExactlyOnce
from consumer.delivery import (
    BATCH_OVERHEAD,
    DeliveryFailure,
    PermanentDeliveryError,
    Remedy,
    record_size,
    remedy,
    stop_message,
)
from consumer.errors import FatalError


class Report:
    """What a delivery report's message offers ``on_delivery``."""

    def __init__(self, topic: str, key: bytes, value: bytes) -> None:
        self._topic, self._key, self._value = topic, key, value

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self) -> None:
        return None


@pytest.mark.parametrize(
    ("code", "topic", "expected"),
    [
        (KafkaError.MSG_SIZE_TOO_LARGE, TOPICS.strategy_changes, Remedy.dead_letter),
        (KafkaError.MSG_SIZE_TOO_LARGE, TOPICS.risk_alerts, Remedy.dead_letter),
        (KafkaError.MSG_SIZE_TOO_LARGE, TOPICS.dlq, Remedy.dead_letter),
        (KafkaError.MSG_SIZE_TOO_LARGE, TOPICS.changelog, Remedy.stop),  # state: not droppable
        (KafkaError.RECORD_LIST_TOO_LARGE, TOPICS.strategy_changes, Remedy.dead_letter),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, TOPICS.strategy_changes, Remedy.stop),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, TOPICS.changelog, Remedy.stop),
        (KafkaError.CLUSTER_AUTHORIZATION_FAILED, TOPICS.risk_alerts, Remedy.stop),
        (KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, TOPICS.dlq, Remedy.stop),
        (KafkaError._UNKNOWN_TOPIC, TOPICS.strategy_changes, Remedy.stop),
        (KafkaError._UNKNOWN_PARTITION, TOPICS.changelog, Remedy.stop),
        (KafkaError.INVALID_REQUIRED_ACKS, TOPICS.strategy_changes, Remedy.stop),
        (KafkaError.INVALID_RECORD, TOPICS.changelog, Remedy.stop),
        # Time cures these: a leader moving, replicas catching up, our own abort's purge.
        (KafkaError.UNKNOWN_TOPIC_OR_PART, TOPICS.strategy_changes, Remedy.retry),
        (KafkaError.NOT_ENOUGH_REPLICAS, TOPICS.strategy_changes, Remedy.retry),
        (KafkaError.NOT_LEADER_FOR_PARTITION, TOPICS.changelog, Remedy.retry),
        (KafkaError._MSG_TIMED_OUT, TOPICS.strategy_changes, Remedy.retry),
        (KafkaError._PURGE_QUEUE, TOPICS.strategy_changes, Remedy.retry),
        (KafkaError._TRANSPORT, TOPICS.dlq, Remedy.retry),
    ],
)
def test_each_delivery_error_has_one_remedy(code: int, topic: str, expected: Remedy) -> None:
    assert remedy(code, topic, TOPICS) is expected


def test_record_size_bounds_a_batch_of_one_record() -> None:
    assert record_size(b"L1", b"x" * 100) == BATCH_OVERHEAD + 102
    assert record_size(None, None) == BATCH_OVERHEAD
    assert record_size(b"k", b"v", [("h", b"12")]) == BATCH_OVERHEAD + 2 + 10 + 3


def test_a_stop_message_names_the_topic_the_error_and_the_fix() -> None:
    denied = DeliveryFailure("ch", KafkaError.TOPIC_AUTHORIZATION_FAILED, "TOPIC_AUTH", "no", 9)
    message = stop_message(denied)
    assert message.startswith("cannot write to ch: TOPIC_AUTH (no); no retry can fix this")
    assert "--operation Write" in message and "--topic ch" in message
    assert message.endswith("no input offset past the last commit was committed")
    gone = DeliveryFailure("ch", KafkaError._UNKNOWN_TOPIC, "_UNKNOWN_TOPIC", "gone", 9)
    assert "does not exist (deleted?)" in stop_message(gone)
    assert "loan-recovery topics create" in stop_message(gone)
    batched = DeliveryFailure("ch", KafkaError.MSG_SIZE_TOO_LARGE, "MSG_SIZE", "big", 300)
    assert "set batch.size below 500" in stop_message(batched, 500)
    state = DeliveryFailure(TOPICS.changelog, KafkaError.MSG_SIZE_TOO_LARGE, "MSG", "big", 900)
    assert "max.message.bytes=500 and cannot be dead-lettered" in stop_message(state, 500)


def _fail_delivery(rig: Rig, code: int, topic: str, value: bytes) -> None:
    """A unit whose record to ``topic`` the broker refused with ``code``: the report, and
    (exactly once) the transaction made abortable by it."""
    rig.process(0, 10, 15)
    rig.checkpoint.produce(topic, b"L1", value)
    error = KafkaError(code, f"injected {code}")
    rig.errors.on_delivery_error(error, Report(topic, b"L1", value))  # type: ignore[arg-type]
    rig.producers[-1].fail["commit_transaction"] = [failure(code, abort=True)]


@pytest.mark.parametrize("kind", [ExactlyOnce, AtLeastOnce])
def test_an_output_over_its_topics_limit_is_dead_lettered_and_the_redo_goes_on(kind) -> None:
    rig = Rig(kind)
    asked: list[list[str]] = []
    rig.checkpoint.read_limits = lambda names: asked.append(names) or {"ch": 100}
    _fail_delivery(rig, KafkaError.MSG_SIZE_TOO_LARGE, "ch", b"x" * 200)
    assert rig.checkpoint.commit() is False  # aborted, rolled back, rewound
    assert rig.consumer.seeks[-1] == ("ev", 0, 10)
    assert asked == [["ch"]] and rig.checkpoint.size_limits == {"ch": 100}
    assert rig.clock.sleeps == [] and rig.health.stalled_since is None  # not an outage
    # The redo: the same record goes to the DLQ with why; a small one to its topic.
    rig.process(0, 10, 15)
    rig.checkpoint.produce("ch", b"L1", b"x" * 200)
    rig.checkpoint.produce("ch", b"L2", b"small")
    assert rig.checkpoint.commit() is True
    produced = [args for method, args in rig.producers[-1].calls if method == "produce"]
    topics = [(topic, key) for topic, key, *_ in produced]
    assert ("dlq", b"L1") in topics and ("ch", b"L2") in topics
    assert topics.count(("ch", b"L1")) == 1  # only in the aborted unit
    (dead,) = [args for args in produced if args[0] == "dlq"]
    headers = dict(dead[4])
    assert dead[2] == b"x" * 200  # the bytes, for re-publishing once the limit is raised
    assert headers["error.reason"] == b"output_too_large"
    assert headers["source.topic"] == b"ch"  # not the input topic: redrive leaves it alone
    assert b"max.message.bytes=100" in headers["error.message"]
    assert rig.metrics.dlq.labels(reason="output_too_large")._value.get() == 1


def test_a_dead_letter_over_the_dlq_limit_goes_without_its_bytes() -> None:
    rig = Rig(ExactlyOnce)
    rig.checkpoint.size_limits = {"dlq": 150}
    rig.checkpoint.produce("dlq", b"L1", b"x" * 200, headers=[("error.reason", b"bad")])
    ((topic, _, value, _, headers),) = [
        args for method, args in rig.producers[0].calls if method == "produce"
    ]
    assert (topic, value) == ("dlq", None)
    assert ("error.value_dropped", b"200") in headers


def test_a_batch_over_the_limit_whose_records_fit_alone_stops_naming_batch_size() -> None:
    rig = Rig(ExactlyOnce)
    rig.checkpoint.read_limits = lambda names: {"ch": 10_000}
    _fail_delivery(rig, KafkaError.MSG_SIZE_TOO_LARGE, "ch", b"x" * 200)
    with pytest.raises(PermanentDeliveryError, match=r"set batch\.size below 10000"):
        rig.checkpoint.commit()
    assert "abort_transaction" in rig.producers[0].methods()
    assert "commit_transaction" in rig.producers[0].methods()  # the failed one, not retried
    assert rig.stores[0].rollbacks == 1 and rig.stores[0].commits == 0


@pytest.mark.parametrize("kind", [ExactlyOnce, AtLeastOnce])
@pytest.mark.parametrize(
    ("code", "topic", "fix"),
    [
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "ch", "grant the scorer's principal WRITE"),
        (KafkaError._UNKNOWN_TOPIC, "ch", "does not exist (deleted?)"),
        (KafkaError.MSG_SIZE_TOO_LARGE, TOPICS.changelog, "cannot be dead-lettered (state)"),
    ],
)
def test_an_error_no_retry_can_fix_aborts_and_stops_with_the_fix(kind, code, topic, fix) -> None:
    rig = Rig(kind)
    rig.checkpoint.read_limits = lambda names: {name: 100 for name in names}
    _fail_delivery(rig, code, topic, b"x" * 200)
    with pytest.raises(PermanentDeliveryError) as stopped:
        rig.checkpoint.commit()
    message = str(stopped.value)
    assert message.startswith(f"cannot write to {topic}: ") and fix in message
    assert isinstance(stopped.value, FatalError)  # the CLI exits 1 with this line
    assert rig.errors.fatal == message  # so neither revoke nor close commits on the way out
    assert rig.stores[0].rollbacks == 1 and rig.stores[0].commits == 0
    assert rig.consumer.commits == []  # at least once: no offset either
    assert rig.clock.sleeps == []  # no retrying first


def test_transient_delivery_errors_are_redone_with_capped_backoff() -> None:
    rig = Rig(ExactlyOnce)
    for _ in range(8):
        _fail_delivery(rig, KafkaError.NOT_ENOUGH_REPLICAS, "ch", b"x")
        assert rig.checkpoint.commit() is False
    assert rig.clock.sleeps == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]  # bounded
    assert rig.health.stalled_since is not None  # /readyz says so meanwhile


def test_produce_refused_for_a_topic_that_is_gone_aborts_and_stops() -> None:
    rig = Rig(ExactlyOnce)
    rig.process(0, 10, 15)
    rig.producers[0].fail["produce"] = [failure(KafkaError._UNKNOWN_TOPIC)]
    with pytest.raises(PermanentDeliveryError, match=r"cannot write to ch: .*does not exist"):
        rig.checkpoint.produce("ch", b"L1", b"change")
    assert "abort_transaction" in rig.producers[0].methods()
    assert not rig.checkpoint.open


def test_an_output_over_the_producers_own_limit_is_dead_lettered() -> None:
    rig = Rig(ExactlyOnce)
    rig.producers[0].fail["produce"] = [failure(KafkaError.MSG_SIZE_TOO_LARGE)]
    rig.checkpoint.produce("ch", b"L1", b"x" * 50)
    produced = [args for method, args in rig.producers[0].calls if method == "produce"]
    assert [args[0] for args in produced] == ["ch", "dlq"]
    assert dict(produced[1][4])["error.reason"] == b"output_too_large"


def test_a_commit_denied_by_an_acl_stops_even_if_its_records_report_only_the_purge() -> None:
    """AddPartitionsToTxn refused (TOPIC_AUTHORIZATION_FAILED): the records never reach the
    broker and report only _PURGE_QUEUE (transient); the commit's own error decides."""
    rig = Rig(ExactlyOnce)
    rig.process(0, 10, 15)
    rig.checkpoint.produce("ch", b"L1", b"x")
    purged = KafkaError(KafkaError._PURGE_QUEUE, "purged")
    rig.errors.on_delivery_error(purged, Report("ch", b"L1", b"x"))  # type: ignore[arg-type]
    denied = failure(KafkaError.TOPIC_AUTHORIZATION_FAILED, abort=True)
    rig.producers[0].fail["commit_transaction"] = [denied]
    with pytest.raises(PermanentDeliveryError, match="grant the scorer's principal WRITE"):
        rig.checkpoint.commit()
    assert "abort_transaction" in rig.producers[0].methods()
    assert rig.stores[0].commits == 0


def test_a_commit_failing_as_too_large_is_settled_by_its_delivery_reports() -> None:
    rig = Rig(ExactlyOnce)
    rig.checkpoint.read_limits = lambda names: {"ch": 100}
    _fail_delivery(rig, KafkaError.MSG_SIZE_TOO_LARGE, "ch", b"x" * 200)
    assert rig.checkpoint.commit() is False  # dead-lettered in the redo, not a stop
    assert rig.checkpoint.size_limits == {"ch": 100}


def test_produce_into_a_transaction_the_broker_already_failed_aborts_at_the_commit() -> None:
    """After a refused record the transaction is abortable and produce() fails with _STATE
    (seen on a real broker): the unit is aborted and redone, the scorer does not exit."""
    rig = Rig(ExactlyOnce)
    rig.checkpoint.read_limits = lambda names: {"ch": 100}
    rig.process(0, 10, 15)
    rig.checkpoint.produce("ch", b"L1", b"x" * 200)
    refused = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large")
    rig.errors.on_delivery_error(refused, Report("ch", b"L1", b"x" * 200))  # type: ignore[arg-type]
    rig.producers[0].fail["produce"] = [failure(KafkaError._STATE)]
    rig.checkpoint.produce("ch", b"L2", b"y")  # no exception: the unit is doomed
    assert rig.checkpoint.doomed is not None
    assert rig.checkpoint.commit() is False
    methods = rig.producers[0].methods()
    assert "abort_transaction" in methods and "commit_transaction" not in methods
    assert rig.checkpoint.doomed is None and rig.checkpoint.size_limits == {"ch": 100}
    assert rig.consumer.seeks[-1] == ("ev", 0, 10)


@pytest.mark.parametrize("code", [KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT])
@pytest.mark.parametrize(("missing", "stops"), [(["ch"], True), ([], False)])
def test_unknown_topic_or_partition_stops_only_if_the_metadata_lost_the_topic(
    code: int, missing: list[str], stops: bool
) -> None:
    rig = Rig(ExactlyOnce)
    rig.checkpoint.missing_topics = lambda names: [t for t in names if t in missing]
    rig.process(0, 10, 15)
    unknown = failure(code, abort=True)
    rig.producers[0].fail["commit_transaction"] = [unknown]
    if stops:  # deleted
        with pytest.raises(PermanentDeliveryError, match=r"cannot write to ch: .*deleted\?"):
            rig.checkpoint.commit()
        assert rig.clock.sleeps == []
    else:  # a partition moving: redone after a backoff
        assert rig.checkpoint.commit() is False
        assert rig.clock.sleeps == [0.1]
    assert rig.stores[0].commits == 0 and rig.stores[0].rollbacks == 1


def test_a_doomed_unit_asks_the_transaction_for_its_error_and_stops_on_an_acl() -> None:
    """An ACL refusing AddPartitionsToTxn dooms the unit before its commit; the abortable
    state's own error (returned by the next transactional call) names the cause."""
    rig = Rig(ExactlyOnce)
    rig.process(0, 10, 15)
    producer = rig.producers[0]
    producer.fail["produce"] = [failure(KafkaError._STATE)]
    rig.checkpoint.produce("ch", b"L1", b"x")
    denied = failure(KafkaError.TOPIC_AUTHORIZATION_FAILED, abort=True)
    producer.fail["send_offsets_to_transaction"] = [denied]
    with pytest.raises(PermanentDeliveryError, match="grant the scorer's principal WRITE"):
        rig.checkpoint.commit()
    assert "commit_transaction" not in producer.methods()
    assert "abort_transaction" in producer.methods()


@pytest.mark.parametrize(("missing", "stops"), [(["ch"], True), ([], False)])
def test_a_commit_timing_out_asks_once_whether_a_topic_is_gone(
    missing: list[str], stops: bool
) -> None:
    """Records for a deleted topic wait in librdkafka (UNKNOWN_TOPIC_OR_PART, retried) and the
    commit times out: at the stall's first failure the metadata is asked, once."""
    rig = Rig(ExactlyOnce)
    asked: list[list[str]] = []
    rig.checkpoint.missing_topics = lambda names: (
        asked.append(names) or [t for t in names if t in missing]
    )
    rig.process(0, 10, 15)
    timeout = failure(KafkaError._TIMED_OUT, retriable=True)
    rig.producers[0].fail["commit_transaction"] = [timeout, timeout, timeout]
    if stops:
        with pytest.raises(PermanentDeliveryError, match=r"cannot write to ch: .*deleted\?"):
            rig.checkpoint.commit()
        assert rig.clock.sleeps == [] and rig.stores[0].commits == 0
    else:  # an outage: waited out, the metadata asked at the first failure only
        assert rig.checkpoint.commit() is True
        assert len(asked) == 1 and rig.clock.sleeps == [0.1, 0.2, 0.4]


@pytest.mark.parametrize(("missing", "stops"), [(["ch"], True), ([], False)])
def test_an_abort_refused_after_a_topic_was_deleted_stops_naming_it(
    missing: list[str], stops: bool
) -> None:
    """Measured on a real broker: a commit whose records for a deleted topic timed out is
    abortable, and the abort is then refused with _CONFLICT ("commit_transaction API call is
    already in progress") for minutes. At the abort's first failure the metadata is asked: a
    deleted topic stops the scorer naming it; otherwise the abort is retried as an outage."""
    rig = Rig(ExactlyOnce)
    rig.checkpoint.missing_topics = lambda names: [t for t in names if t in missing]
    rig.process(0, 10, 15)
    producer = rig.producers[0]
    producer.fail["commit_transaction"] = [failure(KafkaError._TIMED_OUT, abort=True)]
    conflict = failure(KafkaError._CONFLICT, retriable=True)
    producer.fail["abort_transaction"] = [conflict, conflict]
    if stops:
        with pytest.raises(PermanentDeliveryError, match=r"cannot write to ch: .*deleted\?"):
            rig.checkpoint.commit()
        assert rig.clock.sleeps == [] and rig.stores[0].commits == 0
    else:
        assert rig.checkpoint.commit() is False
        assert producer.methods().count("abort_transaction") == 3
    assert rig.stores[0].commits == 0
