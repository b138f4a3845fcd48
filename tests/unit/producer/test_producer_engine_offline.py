"""The producer engine without a broker: encoding, ordering checks, rate limit, properties
files, dry runs (delivery against the real broker: tests/integration/test_producer_engine.py)."""

from __future__ import annotations

from pathlib import Path

import fastavro
import pytest
from producer_books import T0, book, loan_history

from producer.config import KafkaConfigError, load_properties, producer_config
from producer.encoding import EventEncoder, RejectedEvent
from producer.engine import write_avro_file
from producer.ratelimit import TokenBucket
from producer.sources import MONTH_MS, paced_by_event_time
from schemas import AvroSerde
from schemas.events import with_defaults


def test_encoder_writes_the_serde_bytes_keyed_by_loan() -> None:
    serde, encoder = AvroSerde("LoanEvent"), EventEncoder()
    for event in book(20):
        key, value = encoder.encode(event)
        assert key == event["loan_id"].encode()
        assert value == serde.encode(event)
        assert serde.decode(value) == with_defaults(event)


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
    assert back == [with_defaults(e) for e in events]
    assert summary.by_type["LoanOpened"] == 30


@pytest.mark.parametrize("module", ["producer.config", "producer.ratelimit", "producer.encoding"])
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
