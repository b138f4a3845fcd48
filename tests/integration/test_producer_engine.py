"""The producer engine: encoding, ordering checks, rate limit, properties files (no broker),
then delivery accounting against the real broker."""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from pathlib import Path

import fastavro
import pytest
from confluent_kafka import Consumer, TopicPartition

from producer.config import KafkaConfigError, load_properties, producer_config
from producer.encoding import EventEncoder, RejectedEvent
from producer.engine import EventProducer, StopFlag, write_avro_file
from producer.ratelimit import TokenBucket
from producer.sources import MONTH_MS, paced_by_event_time
from schemas import AvroSerde
from schemas.events import make_event

T0 = 1_700_000_000_000
DAY_MS = 86_400_000


def loan_history(loan: int, start_ms: int = T0) -> list[dict]:
    """One loan's life in event-time order, using every body type."""
    lid, bid = f"L{loan:05d}", f"B{loan:05d}"

    def ev(day: int, kind: str, body: dict) -> dict:
        return make_event(str(uuid.uuid4()), lid, bid, start_ms + day * DAY_MS, kind, body)

    return [
        ev(
            0,
            "LoanOpened",
            {
                "age": 30 + loan % 40,
                "gender": "Female",
                "employment_type": "Salaried",
                "monthly_income": 4200.0,
                "num_dependents": 2,
                "loan_amount": 20000.0 + loan,
                "loan_tenure_months": 36,
                "interest_rate": 9.5,
                "loan_type": "Auto",
                "collateral_value": 5000.0,
                "monthly_emi": 640.0,
            },
        ),
        ev(
            30,
            "PaymentReceived",
            {
                "installment_due_date": 19700,
                "amount_due": 640.0,
                "amount_paid": 640.0,
                "outstanding_after": 19500.0,
            },
        ),
        ev(
            61,
            "PaymentMissed",
            {
                "installment_due_date": 19730,
                "amount_due": 640.0,
                "days_past_due": 1,
                "outstanding": 19500.0,
            },
        ),
        ev(
            75,
            "CollectionAttempt",
            {"method": "CALLS", "outcome": "PROMISE_TO_PAY", "legal_action": False},
        ),
        ev(90, "LoanClosed", {"reason": "SETTLED"}),
    ]


def book(n_loans: int) -> list[dict]:
    """Loans interleaved by event time, like a real replay."""
    events = [e for i in range(n_loans) for e in loan_history(i, T0 + i * 1000)]
    return sorted(events, key=lambda e: e["occurred_at"])


# -- no broker ---------------------------------------------------------------------------------


def test_encoder_writes_the_serde_bytes_keyed_by_loan() -> None:
    serde, encoder = AvroSerde("LoanEvent"), EventEncoder()
    for event in book(20):
        key, value = encoder.encode(event)
        assert key == event["loan_id"].encode()
        assert value == serde.encode(event)
        assert serde.decode(value) == event


def test_out_of_order_and_invalid_events_are_rejected_with_a_reason() -> None:
    encoder = EventEncoder()
    first, second = loan_history(1)[:2]
    encoder.encode(second)
    with pytest.raises(RejectedEvent) as late:
        encoder.encode(first)
    assert late.value.reason == "out_of_order" and "L00001" in str(late.value)
    broken = {**loan_history(2)[1], "body": ("loanrec.events.PaymentReceived", {"x": 1})}
    with pytest.raises(RejectedEvent) as invalid:
        encoder.encode(broken)
    assert invalid.value.reason == "invalid_record"


def test_token_bucket_holds_the_long_run_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(
        rate=1000.0, burst=100, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s)
    )
    for _ in range(50):
        assert bucket.acquire(100)
    # 5000 events at 1000/s: the first burst is free, the rest is paid by waiting.
    assert now[0] == pytest.approx(4.9, abs=0.01)


def test_token_bucket_gives_up_when_stopped() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, clock=lambda: 0.0, sleep=lambda s: None)
    assert bucket.acquire(1)
    assert not bucket.acquire(1, stop=lambda: True)


def test_pacing_maps_event_months_to_wall_seconds() -> None:
    now = [100.0]
    events = [{"occurred_at": T0 + int(i * MONTH_MS)} for i in range(5)]
    yielded_at = []
    for _ in paced_by_event_time(
        events,
        months_per_second=2.0,
        stop=lambda: False,
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + s),
    ):
        yielded_at.append(now[0] - 100.0)
    assert yielded_at == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0], abs=1e-6)


def test_properties_file_passes_through_and_guarantees_hold(tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text(
        "# SASL over TLS\nbootstrap.servers=b1:9093\nsecurity.protocol=SASL_SSL\n"
        "sasl.mechanisms = SCRAM-SHA-512\nsasl.password=a=b:c\n\nlinger.ms: 50\n"
    )
    user = load_properties(props)
    assert user["sasl.password"] == "a=b:c" and user["linger.ms"] == "50"
    config = producer_config(None, user)
    assert config["bootstrap.servers"] == "b1:9093"
    assert config["security.protocol"] == "SASL_SSL"
    assert (config["enable.idempotence"], config["acks"]) == ("true", "all")
    assert producer_config("x:1", user)["bootstrap.servers"] == "x:1"
    for bad in ({"acks": "1"}, {"enable.idempotence": "false"}, {"partitioner": "murmur2"}):
        with pytest.raises(KafkaConfigError):
            producer_config("x:1", bad)
    props.write_text("just-a-word\n")
    with pytest.raises(KafkaConfigError, match="line 1"):
        load_properties(props)


def test_dry_run_writes_a_readable_avro_container_file(tmp_path: Path) -> None:
    events = book(30)
    out = tmp_path / "sub" / "events.avro"
    summary = write_avro_file(events, out)
    assert summary.ok and summary.sent == summary.acknowledged == len(events)
    with open(out, "rb") as handle:
        back = list(fastavro.reader(handle, return_record_name=True))
    assert back == events
    assert summary.by_type["LoanOpened"] == 30


# -- against the broker ------------------------------------------------------------------------


def watermark_total(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        return sum(
            hi - lo
            for lo, hi in (
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in range(partitions)
            )
        )
    finally:
        consumer.close()


def consume(bootstrap: str, topic: str, expected: int) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list = []
    try:
        for _ in range(60):
            messages += [m for m in consumer.consume(1000, timeout=1.0) if not m.error()]
            if len(messages) >= expected:
                break
    finally:
        consumer.close()
    return messages


def test_every_event_acknowledged_keyed_and_in_per_loan_order(
    bootstrap_servers: str, make_topic
) -> None:
    topic = make_topic("produce", partitions=6)
    events = book(400)
    summary = EventProducer({"bootstrap.servers": bootstrap_servers}, topic).run(events)
    assert summary.ok, summary.first_error
    assert summary.acknowledged == summary.sent == len(events) == 2000
    assert watermark_total(bootstrap_servers, topic, 6) == len(events)

    serde = AvroSerde("LoanEvent")
    partitions_of, times_of = defaultdict(set), defaultdict(list)
    for message in sorted(
        consume(bootstrap_servers, topic, len(events)), key=lambda m: (m.partition(), m.offset())
    ):
        event = serde.decode(message.value())
        assert message.key() == event["loan_id"].encode()
        partitions_of[event["loan_id"]].add(message.partition())
        times_of[event["loan_id"]].append(event["occurred_at"])
    assert all(len(p) == 1 for p in partitions_of.values())  # a loan lives on one partition
    assert all(t == sorted(t) for t in times_of.values())  # ...in event-time order
    assert len({p for ps in partitions_of.values() for p in ps}) == 6  # spread over all


def test_rate_limit_is_respected(bootstrap_servers: str, make_topic) -> None:
    topic = make_topic("rate")
    summary = EventProducer({"bootstrap.servers": bootstrap_servers}, topic, rate=400).run(
        book(60)
    )  # 300 events; the first burst (40) is free
    assert summary.ok
    assert 0.55 < summary.seconds < 1.5, summary.seconds


def test_stop_flag_flushes_what_was_sent(bootstrap_servers: str, make_topic) -> None:
    topic = make_topic("stop")
    stop = StopFlag()

    def endless():
        loan = 0
        while True:
            yield from loan_history(loan)
            loan += 1
            if loan == 50:
                stop.set()  # as the SIGTERM handler would

    summary = EventProducer({"bootstrap.servers": bootstrap_servers}, topic, chunk=64).run(
        endless(), stop
    )
    assert summary.interrupted and summary.ok
    assert summary.sent >= 250
    assert watermark_total(bootstrap_servers, topic, 1) == summary.sent


def test_delivery_failures_are_counted_never_dropped(bootstrap_servers: str, make_topic) -> None:
    # A real broker-side rejection: the topic accepts batches of at most 1 KiB.
    topic = make_topic("small", config={"max.message.bytes": "1024"})
    events = book(5)
    huge = loan_history(99, T0 + 10**9)[0]
    huge["body"][1]["employment_type"] = "x" * 5000
    summary = EventProducer(
        {"bootstrap.servers": bootstrap_servers, "compression.type": "none"}, topic
    ).run([*events, huge])
    assert not summary.ok
    assert summary.failed >= 1 and "MSG_SIZE_TOO_LARGE" in summary.errors
    assert summary.acknowledged + summary.failed == summary.sent == len(events) + 1
    assert watermark_total(bootstrap_servers, topic, 1) == summary.acknowledged


def test_unreachable_broker_fails_every_event_with_a_reason() -> None:
    from loan_recovery.broker import free_port

    producer = EventProducer(
        {
            "bootstrap.servers": f"127.0.0.1:{free_port()}",
            "message.timeout.ms": "1500",
            "log_level": "0",
        },
        "nowhere",
    )
    summary = producer.run(book(3))
    assert not summary.ok
    assert summary.failed == summary.sent == 15 and summary.acknowledged == 0
    assert "_MSG_TIMED_OUT" in summary.errors


@pytest.mark.parametrize("module", ["producer.config", "producer.ratelimit", "producer.encoding"])
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_a_live_source_that_ends_on_stop_counts_as_interrupted(
    bootstrap_servers: str, make_topic
) -> None:
    topic = make_topic("live-stop")
    stop = StopFlag()
    live = paced_by_event_time(book(20), months_per_second=0.001, stop=stop.is_set)
    threading.Timer(1.0, stop.set).start()  # as SIGTERM would, while the source waits
    # The 20 openings fill 5 chunks of 4; the next chunk waits a month of event time and
    # comes back empty when the stop arrives.
    summary = EventProducer({"bootstrap.servers": bootstrap_servers}, topic, chunk=4).run(
        live, stop
    )
    assert summary.interrupted and summary.ok
    assert summary.sent == watermark_total(bootstrap_servers, topic, 1) == 20
