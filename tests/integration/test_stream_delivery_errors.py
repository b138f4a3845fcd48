"""Delivery errors on a real broker (issue #12, item 6; ``consumer.delivery``).

- The record at fault: the strategy-changes topic's ``max.message.bytes`` is cut below the
  size of a ``StrategyChanged`` while the scorer runs. The broker refuses the next unit's
  changes (MSG_SIZE_TOO_LARGE), the transaction aborts once, the scorer reads the new limit
  and redoes the unit with every change over it dead-lettered (``output_too_large``, the
  record's bytes kept); the stream goes on. Exactly once across both topics: the changes
  topic plus those dead letters are exactly the batch reference's changes.
- An error no retry can fix: the strategy-changes topic is deleted while the scorer runs. It
  exits 1 with one line naming the topic, the error and the fix, after aborting: its committed
  input offsets stop before the first change it could not write. Recreated, a restart with the
  same instance id writes exactly the reference's changes from there on.
- Authorization: on a broker of its own with Kafka's ``StandardAuthorizer`` (everything
  allowed unless an ACL says otherwise), an ACL denying WRITE on the strategy-changes topic is
  added while the scorer runs: the same exit, the line naming the grant; the ACL removed, a
  restart goes on exactly once.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourcePatternType,
    ResourceType,
)
from test_stream_crash import committed_offsets
from test_stream_eos import (
    FAST_GROUP,
    PARTITIONS,
    Scorer,
    assert_same_changes,
    change_keys,
    committed_total,
    encoded,
    produce,
    read_all,
    reference_keys,
    scored_book,
)

from loan_recovery.broker import LocalBroker
from producer.admin import create_topics
from schemas import AvroSerde
from schemas.topics import Topics

pytestmark = pytest.mark.integration
BOOK_LOANS = 150
TINY_LIMIT = 200  # bytes: below every StrategyChanged (they carry 1-3 reasons with texts)


@pytest.fixture(scope="module")
def tiny_book(tmp_path_factory, trained_model: Path) -> dict:
    return scored_book(tmp_path_factory.mktemp("delivery-book"), trained_model, BOOK_LOANS, 21)


@pytest.fixture
def topics(bootstrap_servers: str, unique_name) -> Topics:
    app = unique_name("delivery")
    t = Topics(f"{app}.events", f"{app}.changes", f"{app}.alerts", f"{app}.dlq", app)
    create_topics(bootstrap_servers, t, partitions=PARTITIONS)
    return t


@pytest.fixture
def start_scorer(bootstrap_servers: str, trained_model: Path, tmp_path: Path) -> Iterator:
    started: list[Scorer] = []

    def start(topics: Topics, bootstrap: str | None = None) -> Scorer:
        properties = tmp_path / "client.properties"
        properties.write_text(FAST_GROUP)
        scorer = Scorer(
            bootstrap or bootstrap_servers,
            trained_model,
            topics,
            "delivery-0",
            properties,
            tmp_path / f"scorer-{len(started)}.log",
            {"--exit-when-idle": "600"},  # it stops when the test says so
        )
        started.append(scorer)
        return scorer

    yield start
    for scorer in started:
        scorer.stop()


def _first_part(book: dict) -> tuple[list, list, int]:
    records = encoded(book["events"])
    cut = len(records) * 3 // 10
    return records[:cut], records[cut:], cut


def _drained(scorer: Scorer, bootstrap: str, topics: Topics, count: int, what: str) -> None:
    def committed() -> int:
        try:
            return committed_total(bootstrap, topics)
        except KafkaException:  # a fresh broker's group coordinator still loading
            return -1

    scorer.wait_for(lambda: committed() == count, 180, what)


def test_an_output_over_its_topics_limit_is_dead_lettered_and_the_stream_goes_on(
    bootstrap_servers: str, tiny_book: dict, topics: Topics, start_scorer
) -> None:
    first, rest, cut = _first_part(tiny_book)
    produce(bootstrap_servers, topics.events, first)
    scorer = start_scorer(topics)
    _drained(scorer, bootstrap_servers, topics, cut, "the first 30 % committed")
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    entry = ConfigEntry(
        "max.message.bytes", str(TINY_LIMIT), incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource(
        ResourceType.TOPIC, topics.strategy_changes, incremental_configs=[entry]
    )
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    produce(bootstrap_servers, topics.events, rest)
    _drained(scorer, bootstrap_servers, topics, len(tiny_book["events"]), "every event committed")
    assert scorer.process.poll() is None  # the stream went on

    want = reference_keys(tiny_book["changes"])
    delivered, _ = change_keys(bootstrap_servers, topics, 1)
    serde = AvroSerde("StrategyChanged")
    dead: Counter = Counter()
    for message in read_all(bootstrap_servers, topics.dlq, 1, 30):
        headers = dict(message.headers() or [])
        if headers.get("error.reason") != b"output_too_large":
            continue
        assert headers["source.topic"] == topics.strategy_changes.encode()
        assert f"max.message.bytes={TINY_LIMIT}".encode() in headers["error.message"]
        change = serde.decode(message.value())  # the bytes are kept, decodable
        dead[(change["loan_id"], change["source_event_id"], change["new_strategy"])] += 1
    assert dead and delivered  # both before and after the limit changed
    assert_same_changes(delivered + dead, want)  # exactly once across the two topics
    log = scorer.log_text()
    limits = [json.loads(x) for x in log.splitlines() if '"event": "output_size_limits"' in x]
    assert limits and limits[0]["limits"][topics.strategy_changes] == TINY_LIMIT, log[-3000:]
    aborted = log.count('"event": "transaction_aborted"')
    assert 1 <= aborted <= 3, log[-3000:]  # the unit that met the new limit, not a loop
    print(f"{sum(dead.values())} changes dead-lettered, {aborted} transaction(s) aborted")


def _break_mid_stream(
    bootstrap: str, book: dict, topics: Topics, start_scorer, break_it, fix_it, kept: bool
) -> tuple[str, dict[int, int]]:
    """The first 30 % committed, ``break_it()``, the rest produced: the scorer must exit 1 with
    one ``error:`` line, its committed offsets never past a change it could not write; after
    ``fix_it()`` a restart with the same instance id writes exactly the reference's changes:
    all of them if the topic ``kept`` its records, else those from the committed offsets on.
    The error line and the offsets."""
    first, rest, cut = _first_part(book)
    produce(bootstrap, topics.events, first)
    scorer = start_scorer(topics)
    _drained(scorer, bootstrap, topics, cut, "the first 30 % committed")
    before = committed_offsets(bootstrap, topics)
    break_it()
    produce(bootstrap, topics.events, rest)
    code = scorer.wait_exit(120)
    log = scorer.log_text()
    assert code == 1, log[-3000:]
    (line,) = [x for x in log.splitlines() if x.startswith("error: ")]
    assert "no retry can fix this" in line, line
    assert line.endswith("no input offset past the last commit was committed"), line
    # Nothing committed past a change that was never written: per partition, the committed
    # offset is at most the offset of the first change decided after the break.
    after = committed_offsets(bootstrap, topics)
    unwritten = [
        c for c in book["changes"] if int(c["source_offset"]) >= before[int(c["source_partition"])]
    ]
    assert unwritten
    for partition in range(PARTITIONS):
        lost = [
            int(c["source_offset"]) for c in unwritten if int(c["source_partition"]) == partition
        ]
        if lost:
            assert after[partition] <= min(lost), (partition, after[partition], min(lost))
    print(f"exit 1: {line}; committed {sum(after.values())} of {len(book['events'])}")
    fix_it()
    again = start_scorer(topics)
    _drained(again, bootstrap, topics, len(book["events"]), "drained after the fix")
    want = reference_keys(
        [
            c
            for c in book["changes"]
            if kept or int(c["source_offset"]) >= after[int(c["source_partition"])]
        ]
    )
    got, _ = change_keys(bootstrap, topics, sum(want.values()))
    assert_same_changes(got, want)
    return line, after


def test_the_output_topic_deleted_mid_stream_stops_the_scorer_naming_it_and_commits_nothing_past(
    bootstrap_servers: str, tiny_book: dict, topics: Topics, start_scorer
) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})

    def delete() -> None:
        admin.delete_topics([topics.strategy_changes])[topics.strategy_changes].result(timeout=30)

    def recreate() -> None:  # the fix the message names
        create_topics(bootstrap_servers, topics, partitions=PARTITIONS)

    line, _ = _break_mid_stream(
        bootstrap_servers, tiny_book, topics, start_scorer, delete, recreate, kept=False
    )
    assert line.startswith(f"error: cannot write to {topics.strategy_changes}: "), line
    assert "does not exist (deleted?)" in line and "loan-recovery topics create" in line, line


@pytest.fixture(scope="module")
def acl_broker() -> Iterator[str]:
    """A broker with Kafka's StandardAuthorizer: everything is allowed until an ACL says
    otherwise (``allow.everyone.if.no.acl.found``), so a test can deny one topic."""
    data_dir = Path(tempfile.mkdtemp(prefix="loanrec-test-acl-broker-"))
    broker = LocalBroker(
        data_dir,
        extra={
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "true",
        },
    )
    try:
        yield broker.start().bootstrap_servers
    finally:
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_an_acl_denying_the_output_topic_stops_the_scorer_naming_the_grant(
    acl_broker: str, tiny_book: dict, unique_name, start_scorer
) -> None:
    app = unique_name("acl")
    topics = Topics(f"{app}.events", f"{app}.changes", f"{app}.alerts", f"{app}.dlq", app)
    create_topics(acl_broker, topics, partitions=PARTITIONS)
    admin = AdminClient({"bootstrap.servers": acl_broker})
    deny = AclBinding(
        ResourceType.TOPIC,
        topics.strategy_changes,
        ResourcePatternType.LITERAL,
        "User:ANONYMOUS",  # PLAINTEXT clients' principal
        "*",
        AclOperation.WRITE,
        AclPermissionType.DENY,
    )

    def denied() -> None:
        for future in admin.create_acls([deny]).values():
            future.result(timeout=30)

    def granted() -> None:  # the fix the message names: the deny goes
        matching = AclBindingFilter(
            ResourceType.TOPIC,
            topics.strategy_changes,
            ResourcePatternType.LITERAL,
            "User:ANONYMOUS",
            "*",
            AclOperation.WRITE,
            AclPermissionType.DENY,
        )
        for future in admin.delete_acls([matching]).values():
            future.result(timeout=30)

    start = partial(start_scorer, bootstrap=acl_broker)
    line, _ = _break_mid_stream(acl_broker, tiny_book, topics, start, denied, granted, kept=True)
    assert line.startswith("error: cannot write to "), line
    assert topics.strategy_changes in line, line
    assert "grant the scorer's principal WRITE and DESCRIBE" in line, line
