"""A restore never resumes older state from a newer committed offset (ARCHITECTURE.md §8).

The hazard, made deterministic on the real broker: the previous owner's last transaction
committed its input offsets, but the changelog's commit marker is not written yet, so a
``read_committed`` restore ends before that transaction's state (KIP-98: a reader sees a
partition's records only below its last stable offset). Here the "previous owner" is this
test: it writes the changelog the scorer would have written (the same ``PartitionProcessor``
over each partition's first events, each checkpoint recording its input offset) with a
transactional producer of its own, leaves the last transaction of one partition open, and
commits the group's offsets past it. `loan-recovery serve` then

- with a short ``--restore-wait-s``, exits 1 naming the partition and both offsets, having
  committed nothing and produced nothing;
- with a longer one, waits (``restore_waiting``, no output meanwhile), reads the missing
  records once the transaction commits, and gives exactly the batch reference's outputs for
  every event after the committed offsets -- which it could not with the older state (the
  loans opened in the gap would be unknown).

And the at-least-once case the other way round: `serve --guarantee at-least-once` killed
(SIGKILL, ``serve_killed_before_offset_commit.py``) between a unit's flush and its offset
commit leaves the changelog's checkpoint ahead of the committed offset; the restart resumes
from the checkpoint, reads none of that unit again, and its outputs equal the reference's.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from test_stream_crash import committed_offsets, new_topics
from test_stream_eos import (
    FAST_GROUP,
    PARTITIONS,
    Scorer,
    assert_same_changes,
    change_keys,
    encoded,
    produce,
    read_all,
    reference_keys,
)

from consumer.app import ScorerApp
from consumer.config import ServeConfig
from consumer.partitioning import partition_for
from consumer.processor import BatchResult, PartitionProcessor, Record
from consumer.recovery import ChangelogRestorer
from consumer.reference import score_events
from schemas import AvroSerde
from schemas.topics import Topics

pytestmark = pytest.mark.integration


def write_changelog(
    producer: Producer, topic: str, partition: int, records: list[tuple[bytes, bytes | None]]
) -> None:
    for key, value in records:
        producer.produce(topic, value, key, partition=partition)


def commit_group_offsets(bootstrap: str, topics: Topics, offsets: dict[int, int]) -> None:
    """What the previous owner's transactions committed (the group has no member now)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topics.app_id})
    try:
        consumer.commit(
            offsets=[TopicPartition(topics.events, p, o) for p, o in offsets.items()],
            asynchronous=False,
        )
    finally:
        consumer.close()


def test_serve_waits_for_the_changelog_to_reflect_the_committed_offset_or_stops(
    bootstrap_servers: str, trained_model: Path, unique_name, tmp_path: Path
) -> None:
    from models.data.synthetic import generate_book
    from models.serving.bundle import ModelBundle
    from models.serving.policy import Policy

    topics = new_topics(bootstrap_servers, unique_name("rcheck"))
    events = generate_book(90, seed=43)[1]
    produce(bootstrap_servers, topics.events, encoded(events))
    bundle, policy = ModelBundle.load(trained_model), Policy.load(None)
    by_partition: dict[int, list[dict]] = {p: [] for p in range(PARTITIONS)}
    for event in events:  # offsets: the order produced, per partition
        by_partition[partition_for(event["loan_id"].encode(), PARTITIONS)].append(event)
    late = max(by_partition, key=lambda p: len(by_partition[p]))  # the partition at risk
    n = len(by_partition[late])
    older, newer = n // 3, 2 * n // 3  # what the changelog shows / what the group committed
    committed = {p: len(e) // 2 for p, e in by_partition.items()} | {late: newer}
    # And one whose only transaction is the pending one: its changelog looks empty.
    fresh = next(p for p in sorted(by_partition) if p != late and committed[p] > 0)

    # The previous owner's transactions: every partition's state up to its committed offset,
    # except the late one's last transaction (older..newer) and the fresh one's only one,
    # written but not committed yet.
    encode = AvroSerde("LoanEvent").encode
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "transactional.id": unique_name("previous-owner"),
            "transaction.timeout.ms": 120_000,  # outlives both runs below
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    pending: dict[int, list[tuple[bytes, bytes | None]]] = {}
    for p, part in by_partition.items():
        processor = PartitionProcessor(bundle, policy, p, topics.events)
        cut = older if p == late else committed[p]
        processor.process([(i, e["loan_id"].encode(), encode(e)) for i, e in enumerate(part[:cut])])
        records = processor.store.changelog_records(1, input_offset=cut)
        if p == fresh:
            pending[p] = records
            continue
        write_changelog(producer, topics.changelog, p, records)
        if p == late:
            processor.store.commit()
            gap = list(enumerate(part))[older:newer]
            processor.process([(i, e["loan_id"].encode(), encode(e)) for i, e in gap])
            pending[p] = processor.store.changelog_records(2, input_offset=newer)
    producer.commit_transaction(30)
    producer.begin_transaction()
    for p, records in pending.items():
        write_changelog(producer, topics.changelog, p, records)
    assert producer.flush(30) == 0  # in the log, invisible to read_committed readers
    commit_group_offsets(bootstrap_servers, topics, committed)

    properties = tmp_path / "client.properties"
    properties.write_text(FAST_GROUP)

    def serve(run: str, wait_s: str) -> Scorer:
        return Scorer(
            bootstrap_servers,
            trained_model,
            topics,
            "rc",
            properties,
            tmp_path / f"serve-{run}.log",
            {"--restore-wait-s": wait_s, "--exit-when-idle": "3", "--metrics-port": "0"},
        )

    # 1. The changelog never catches up within the wait: exit 1, the partition and both
    #    offsets named, nothing committed, nothing produced.
    impatient = serve("impatient", "2")
    try:
        assert impatient.wait_exit(60) == 1
        log = impatient.log_text()
    finally:
        impatient.stop()
    (line,) = [x for x in log.splitlines() if x.startswith("error:")]
    if late < fresh:  # the message names the first partition, then the others
        named, state, want, other = late, f"state up to input offset {older}", newer, fresh
    else:
        named, state, want, other = fresh, "no checkpoint", committed[fresh], late
    assert f"partition {named} holds {state}, " in line, line
    assert f"committed offset {want} for that partition (also partitions [{other}])" in line, line
    assert "nothing was committed" in line, line
    assert committed_offsets(bootstrap_servers, topics) == committed
    assert read_all(bootstrap_servers, topics.strategy_changes, 1, timeout_s=2) == []

    # 2. The markers land while it waits: it reads them and resumes from the committed
    #    offsets with the state they reflect.
    patient = serve("patient", "30")
    try:
        patient.wait_for(
            lambda: '"restore_waiting"' in patient.log_text(), 60, "the restore to wait"
        )
        time.sleep(1)  # still waiting: every partition stays paused, nothing is produced
        assert patient.process.poll() is None
        assert read_all(bootstrap_servers, topics.strategy_changes, 1, timeout_s=1) == []
        producer.commit_transaction(30)
        assert patient.wait_exit(60) == 0
        log = patient.log_text()
    finally:
        patient.stop()
    assert '"restore_caught_up"' in log
    waiting = [x for x in log.splitlines() if '"restore_waiting"' in x]
    assert f'"{late}": {{"changelog": {older}, "committed": {newer}}}' in waiting[0]
    assert f'"{fresh}": {{"changelog": null, "committed": {committed[fresh]}}}' in waiting[0]

    reference = score_events(events, bundle, policy, PARTITIONS)
    after = [c for c in reference.changes if c.source_offset >= committed[c.source_partition]]
    got, _ = change_keys(bootstrap_servers, topics, len(after))
    assert_same_changes(got, reference_keys([asdict(c) for c in after]))
    dead = [
        d
        for d in reference.dead_letters
        if d.offset >= committed[partition_for(d.key or b"", PARTITIONS)]
    ]
    out = read_all(bootstrap_servers, topics.dlq, len(dead), timeout_s=5)
    reasons = Counter(dict(m.headers())["error.reason"].decode() for m in out)
    assert reasons == Counter(d.reason for d in dead)  # no unknown_loan from a lost gap
    assert committed_offsets(bootstrap_servers, topics) == {
        p: len(e) for p, e in by_partition.items()
    }


# -- at least once: a crash between the unit's flush and its offset commit ---------------------
KILLED_SERVE = Path(__file__).with_name("serve_killed_before_offset_commit.py")


def changelog_checkpoints(bootstrap: str, topics: Topics, bundle, policy) -> dict[int, int]:
    """Each changelog partition's checkpoint offset, read the way a restore reads it."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topics.app_id}-check",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    restorer = ChangelogRestorer(reader, topics.changelog)
    stores = {
        p: PartitionProcessor(bundle, policy, p, topics.events).store for p in range(PARTITIONS)
    }
    try:
        restorer.restore(stores)
    finally:
        restorer.close()
    return {p: s.restored_offset for p, s in stores.items() if s.restored_offset is not None}


def test_at_least_once_killed_before_its_offset_commit_resumes_from_its_checkpoint(
    bootstrap_servers: str,
    trained_model: Path,
    unique_name,
    tmp_path: Path,
    capsys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`serve --guarantee at-least-once` killed (SIGKILL) right after a unit's flush: its
    outputs and changelog are in Kafka, its offsets are not, so the changelog's checkpoint is
    ahead of the group's committed offset. The restart restores it, resumes from the
    checkpoint's offset (logged and counted), and the outputs are exactly the batch
    reference's: none lost, none twice (the killed unit's were all acknowledged, and nothing
    before the checkpoint is read again)."""
    from consumer.config import Guarantee
    from models.data.synthetic import generate_book
    from models.serving.bundle import ModelBundle
    from models.serving.policy import Policy

    topics = new_topics(bootstrap_servers, unique_name("alo-ahead"))
    events = generate_book(200, seed=44)[1]
    produce(bootstrap_servers, topics.events, encoded(events))
    lengths = Counter(partition_for(e["loan_id"].encode(), PARTITIONS) for e in events)
    # The scorer's own session timeout (none in the file): a short one can expire mid-commit
    # on a loaded machine, and the restart rejoins at once anyway (static membership).
    properties = tmp_path / "client.properties"
    properties.write_text("# the scorer's defaults\n")

    # 1. Units of at most 200 events, one per poll; killed at the first offset commit past
    #    half the input that moves an already committed partition on.
    crashing = Scorer(
        *(bootstrap_servers, trained_model, topics, "alo", properties, tmp_path / "crash.log"),
        {
            "--guarantee": "at-least-once",
            "--commit-interval-ms": "1",
            "--max-batch": "200",
            "--metrics-port": "0",
        },
        command=[sys.executable, str(KILLED_SERVE), str(len(events) // 2)],
    )
    try:  # the reference meanwhile (the scorer starts in its own process)
        bundle, policy = ModelBundle.load(trained_model), Policy.load(None)
        reference = score_events(events, bundle, policy, PARTITIONS)
        assert crashing.wait_exit(90) == -signal.SIGKILL, crashing.log_text()[-3000:]
        log = crashing.log_text()
    finally:
        crashing.stop()
    (line,) = [x for x in log.splitlines() if x.startswith("kill_before_offset_commit ")]
    killed = json.loads(line.split(" ", 1)[1])
    before = {int(p): o for p, o in killed["committed"].items()}
    unit = {int(p): o for p, o in killed["not_committed"].items()}
    # The situation, as the broker shows it: the changelog reflects the killed unit, the
    # group's offsets only the units before it.
    assert committed_offsets(bootstrap_servers, topics) == {
        p: before.get(p, 0) for p in range(PARTITIONS)
    }
    checkpoints = changelog_checkpoints(bootstrap_servers, topics, bundle, policy)
    assert checkpoints == before | unit
    ahead = {p: (o, before.get(p)) for p, o in unit.items() if o != before.get(p)}
    assert any(committed is not None for _, committed in ahead.values()), killed

    # 2. The restart (the same instance, in this process): it resumes from the checkpoints.
    capsys.readouterr()
    config = ServeConfig(
        bootstrap_servers,
        trained_model,
        topics=topics,
        instance_id="alo",
        guarantee=Guarantee.at_least_once,
        exit_when_idle_s=2,
        metrics_port=None,
    )
    restarted = ScorerApp(config, bundle, policy)
    first_applied: dict[int, int] = {}  # per partition, the lowest offset the restart applied
    apply = PartitionProcessor.apply

    def recording_apply(processor: PartitionProcessor, batch: list[Record]) -> BatchResult:
        first = first_applied.setdefault(processor.partition, batch[0][0])
        first_applied[processor.partition] = min(first, batch[0][0])
        return apply(processor, batch)

    monkeypatch.setattr(PartitionProcessor, "apply", recording_apply)
    restarted.run()
    err = capsys.readouterr().err
    (restore,) = [json.loads(x) for x in err.splitlines() if "restore_ahead" in x]
    # What the restart did, for a failure's message: its log without the per-record noise.
    story = "\n".join(x for x in err.splitlines() if x.startswith("{"))[-6000:]
    assert restore["partitions"] == {
        str(p): {"changelog": k, "committed": c} for p, (k, c) in ahead.items()
    }
    assert restarted.metrics.restored_ahead._value.get() == len(ahead)
    # What the killed unit did is not read again: each partition resumes exactly at its
    # checkpoint (offsets, not a count: a unit redone after an aborted commit counts twice in
    # `processed`), and the group's offsets reach the end.
    resumed = {p: checkpoints.get(p, 0) for p in lengths if checkpoints.get(p, 0) < lengths[p]}
    assert first_applied == resumed, (lengths, story)
    assert restarted.processed >= len(events) - sum(checkpoints.values()), story
    assert committed_offsets(bootstrap_servers, topics) == dict(lengths), story

    want = reference_keys([asdict(c) for c in reference.changes])
    got, records = change_keys(bootstrap_servers, topics, len(reference.changes))
    assert_same_changes(got, want)
    last = {r["loan_id"]: r["new_strategy"] for r in records}
    assert last == {c.loan_id: c.new_strategy for c in reference.changes}
    alerts = read_all(bootstrap_servers, topics.risk_alerts, len(reference.alerts), timeout_s=5)
    decode = AvroSerde("EarlyWarningAlert").decode
    assert Counter(
        (a["loan_id"], a["source_event_id"]) for a in map(decode, (m.value() for m in alerts))
    ) == Counter((a.loan_id, a.source_event_id) for a in reference.alerts)
    out = read_all(bootstrap_servers, topics.dlq, len(reference.dead_letters), timeout_s=5)
    headers = [dict(m.headers()) for m in out]
    assert Counter(
        (int(h["source.partition"]), int(h["source.offset"]), h["error.reason"].decode())
        for h in headers
    ) == Counter(
        (partition_for(d.key or b"", PARTITIONS), d.offset, d.reason)
        for d in reference.dead_letters
    )
