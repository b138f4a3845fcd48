"""The foundation against a real broker: Avro round trip, transactions, topic admin."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from producer.admin import create_topics
from schemas import AvroSerde
from schemas.events import make_event
from schemas.topics import Topics


def _events(n: int) -> list[dict]:
    return [
        make_event(
            str(uuid.uuid4()),
            f"L{i % 7}",
            f"B{i % 5}",
            1_700_000_000_000 + i,
            "PaymentReceived",
            {
                "installment_due_date": 19000 + i,
                "amount_due": 100.0 + i,
                "amount_paid": 99.5,
                "outstanding_after": 1000.0 - i,
            },
        )
        for i in range(n)
    ]


def _consume_all(bootstrap: str, topic: str, expected: int, **config) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **config,
        }
    )
    consumer.subscribe([topic])
    messages = []
    try:
        for _ in range(60):
            messages += [m for m in consumer.consume(500, timeout=1.0) if not m.error()]
            if len(messages) >= expected:
                break
    finally:
        consumer.close()
    return messages


def test_avro_events_round_trip_through_kafka(bootstrap_servers: str, make_topic) -> None:
    topic = make_topic("events", partitions=3)
    serde = AvroSerde("LoanEvent")
    events = _events(200)
    payloads = [serde.encode(e) for e in events]
    producer = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True})
    for event, payload in zip(events, payloads, strict=True):
        producer.produce(topic, key=event["loan_id"].encode(), value=payload)
    assert producer.flush(30) == 0

    messages = _consume_all(bootstrap_servers, topic, len(events))
    assert sorted(m.value() for m in messages) == sorted(payloads)  # byte for byte
    decoded = {serde.decode(m.value())["event_id"]: serde.decode(m.value()) for m in messages}
    assert decoded == {e["event_id"]: e for e in events}  # value for value
    for m in messages:
        assert m.key().decode() == serde.decode(m.value())["loan_id"]


def test_transaction_commits_outputs_and_offsets_atomically(
    bootstrap_servers: str, make_topic, unique_name
) -> None:
    source, sink = make_topic("src"), make_topic("sink")
    group = unique_name("eos")
    seed = Producer({"bootstrap.servers": bootstrap_servers})
    for i in range(10):
        seed.produce(source, value=f"in-{i}".encode())
    seed.flush(30)

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([source])
    producer = Producer(
        {"bootstrap.servers": bootstrap_servers, "transactional.id": unique_name("tx")}
    )
    producer.init_transactions(30)
    batch = []
    for _ in range(30):
        batch += consumer.consume(10, timeout=1.0)
        if len(batch) >= 10:
            break
    assert len(batch) == 10

    # An aborted transaction leaves nothing visible to read_committed readers...
    producer.begin_transaction()
    producer.produce(sink, value=b"aborted")
    producer.abort_transaction(30)

    # ...a committed one makes its outputs and the consumed offsets visible together.
    producer.begin_transaction()
    for message in batch:
        producer.produce(sink, value=message.value().replace(b"in-", b"out-"))
    offsets = [TopicPartition(source, 0, batch[-1].offset() + 1)]
    producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
    producer.commit_transaction(30)
    consumer.close()

    outputs = _consume_all(bootstrap_servers, sink, 10, **{"isolation.level": "read_committed"})
    assert sorted(m.value() for m in outputs) == sorted(f"out-{i}".encode() for i in range(10))
    checker = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group})
    committed = checker.committed([TopicPartition(source, 0)], timeout=10)
    checker.close()
    assert committed[0].offset == 10


def test_topics_create_is_idempotent_and_compacts_the_changelog(
    bootstrap_servers: str, unique_name
) -> None:
    prefix = unique_name("app")
    topics = Topics(
        events=f"{prefix}.events",
        strategy_changes=f"{prefix}.changes",
        risk_alerts=f"{prefix}.alerts",
        dlq=f"{prefix}.dlq",
        app_id=prefix,
    )
    first = create_topics(bootstrap_servers, topics, partitions=4)
    second = create_topics(bootstrap_servers, topics, partitions=4)
    assert all(r.created for r in first) and not any(r.created for r in second)
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    metadata = admin.list_topics(timeout=10)
    assert len(metadata.topics[topics.changelog].partitions) == 4
    resource = ConfigResource(ConfigResource.Type.TOPIC, topics.changelog)
    config = admin.describe_configs([resource])[resource].result(timeout=10)
    assert config["cleanup.policy"].value == "compact"


def test_topics_create_cli_takes_a_properties_file_and_a_replication_factor(
    bootstrap_servers: str, unique_name, tmp_path
) -> None:
    """What a bank's platform team runs against its own cluster: client settings from a
    properties file, replicas chosen or left to the cluster, and one clear line when either
    is wrong."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "LOANREC_BOOTSTRAP_SERVERS"}
    props = tmp_path / "client.properties"
    props.write_text(
        f"# the admin client's settings\nbootstrap.servers={bootstrap_servers}\n"
        "client.id=topics-cli-test\n"
    )

    def topics_create(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "loan_recovery.cli",
                "topics",
                "create",
                "--kafka-config",
                str(props),
                "--partitions",
                "2",
                *args,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    app = unique_name("cli-topics")
    done = topics_create("--app-id", app, "--replication-factor", "1", "--json")
    assert done.returncode == 0, done.stderr
    (changelog,) = [r for r in json.loads(done.stdout) if r["name"] == Topics(app_id=app).changelog]
    assert changelog["created"] and changelog["replication_factor"] == 1
    partitions = (
        AdminClient({"bootstrap.servers": bootstrap_servers})
        .list_topics(timeout=10)
        .topics[changelog["name"]]
        .partitions
    )
    assert len(partitions) == 2 and all(len(p.replicas) == 1 for p in partitions.values())

    by_default = topics_create("--app-id", unique_name("cli-topics"), "--json")
    assert by_default.returncode == 0, by_default.stderr  # the cluster's default (1 here)

    too_many = topics_create("--app-id", unique_name("cli-topics"), "--replication-factor", "3")
    assert too_many.returncode == 2
    assert "--replication-factor cannot exceed the number of brokers" in too_many.stderr
    assert len(too_many.stderr.strip().splitlines()) == 1

    props.write_text("bootstrap.servers\n")
    broken = topics_create("--app-id", app)
    assert broken.returncode == 2 and f"{props}, line 1" in broken.stderr
