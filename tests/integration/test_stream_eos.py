"""`loan-recovery serve` against the real broker: parity with `loan-recovery score`, kill -9
crashes, a rebalance, poison input, and a promtool-clean `/metrics`.

Every test replays (a part of) one synthetic book of 2,000 loans (~27,000 events) into its own
topics, runs the scorer as a real subprocess, reads the outputs with ``read_committed`` and
compares them with the batch reference, which `test_parity_with_batch_score` shows to be the
output of an uninterrupted run. Change events are compared as the multiset of
``(loan_id, source_event_id, new_strategy)``, so a missing or duplicated one fails.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
import requests
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from loan_recovery.broker import free_port
from producer.admin import create_topics
from schemas import AvroSerde
from schemas.client_config import PARTITIONER
from schemas.topics import Topics

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 6
BOOK_LOANS = 2000
# Quick failure detection, so a killed member leaves the group in seconds, not 45 s.
FAST_GROUP = "session.timeout.ms=6000\nheartbeat.interval.ms=1000\n"


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> Path:
    """This module's own bundle (it shadows the session's): trained point in time on the
    session's 600 loans, no score passes 0.70, so the book raises no loan to HIGH and the
    alerts' reasons would go unchecked. 1,500 loans of the same generator do (~16 s more)."""
    out = tmp_path_factory.mktemp("eos-model")
    _cli("generate", "--loans", "1500", "--seed", "7", "--out", str(out / "book"))
    _cli(
        "train",
        "--source",
        "seed",
        "--input",
        str(out / "book" / "loans.csv"),
        "--out",
        str(out / "model"),
    )
    return out / "model"


@pytest.fixture(scope="module")
def book(tmp_path_factory, trained_model: Path) -> dict:
    """The book as an event log, and the batch reference computed by the real CLI."""
    from models.data.adapters import read_history, write_jsonl
    from models.data.synthetic import generate_book

    out = tmp_path_factory.mktemp("stream-book")
    _, events, _ = generate_book(BOOK_LOANS, seed=11)
    log = out / "events.jsonl"
    with open(log, "w") as handle:
        write_jsonl(events, handle)
    events = read_history("events", log).events  # exactly what `score` reads
    _cli(
        "score",
        "--model",
        str(trained_model),
        "--source",
        "events",
        "--input",
        str(log),
        "--out",
        str(out / "scores.csv"),
        "--changes",
        str(out / "changes.csv"),
        "--partitions",
        str(PARTITIONS),
    )
    with open(out / "scores.csv") as handle:
        scores = {row["loan_id"]: row for row in csv.DictReader(handle)}
    with open(out / "changes.csv") as handle:
        changes = list(csv.DictReader(handle))
    return {
        "events": events,
        "log": log,
        "scores": scores,
        "changes": changes,
        "model": trained_model,
    }


@pytest.fixture
def topics(bootstrap_servers: str, unique_name) -> Topics:
    app = unique_name("app")
    t = Topics(
        events=f"{app}.events",
        strategy_changes=f"{app}.changes",
        risk_alerts=f"{app}.alerts",
        dlq=f"{app}.dlq",
        app_id=app,
    )
    create_topics(bootstrap_servers, t, partitions=PARTITIONS)
    return t


@pytest.fixture
def scorers(bootstrap_servers: str, book: dict, topics: Topics, tmp_path: Path) -> Iterator:
    """Start scorers with ``scorers(instance_id, ...)``; all are stopped after the test."""
    started: list[Scorer] = []

    def start(instance: str = "i0", extra_properties: str = "", **flags: str) -> Scorer:
        properties = tmp_path / f"client-{instance}.properties"
        properties.write_text(FAST_GROUP + extra_properties)
        scorer = Scorer(
            bootstrap_servers,
            book["model"],
            topics,
            instance,
            properties,
            tmp_path / f"scorer-{instance}-{len(started)}.log",
            flags,
        )
        started.append(scorer)
        return scorer

    yield start
    for scorer in started:
        scorer.stop()


# -- helpers -----------------------------------------------------------------------------------


def _cli(*args: str, timeout: float = 600) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loan_recovery.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"loan-recovery {' '.join(args)}:\n{result.stderr[-3000:]}"


def scored_book(out: Path, model: Path, loans: int, seed: int) -> dict:
    """A synthetic book's events (as `score` reads them) and its batch reference's changes,
    computed by the real CLI in ``out``."""
    from models.data.adapters import read_history, write_jsonl
    from models.data.synthetic import generate_book

    _, events, _ = generate_book(loans, seed=seed)
    log = out / "events.jsonl"
    with open(log, "w") as handle:
        write_jsonl(events, handle)
    changes = out / "changes.csv"
    _cli(
        "score",
        *("--model", str(model), "--source", "events", "--input", str(log)),
        *("--out", str(out / "scores.csv"), "--changes", str(changes)),
        *("--partitions", str(PARTITIONS)),
    )
    with open(changes) as handle:
        return {
            "events": read_history("events", log).events,
            "changes": list(csv.DictReader(handle)),
        }


class Scorer:
    """One `loan-recovery serve` subprocess with its own metrics port and log."""

    def __init__(
        self,
        bootstrap: str,
        model: Path,
        topics: Topics,
        instance: str,
        properties: Path,
        log: Path,
        flags: dict[str, str],
        command: list[str] | None = None,
    ) -> None:
        """``command``: what runs `serve` (by default the CLI's module; a test may wrap it)."""
        self.port = free_port()
        self.log = log
        args = {
            "--model": str(model),
            "--bootstrap-servers": bootstrap,
            "--metrics-port": str(self.port),
            "--input-topic": topics.events,
            "--strategy-topic": topics.strategy_changes,
            "--alerts-topic": topics.risk_alerts,
            "--dlq-topic": topics.dlq,
            "--app-id": topics.app_id,
            "--instance-id": instance,
            "--kafka-config": str(properties),
            "--commit-interval-ms": "100",
            "--exit-when-idle": "6",
            **flags,
        }
        command = [*(command or [sys.executable, "-m", "loan_recovery.cli"]), "serve"]
        command += [x for kv in args.items() for x in kv]
        self._out = open(log, "wb")  # noqa: SIM115 -- closed in stop()
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def samples(self) -> dict[tuple[str, tuple], float]:
        """Current metric samples, or {} while the HTTP port is not up (or gone)."""
        try:
            text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except requests.RequestException:
            return {}
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    def total(self, name: str, **labels: str) -> float:
        return sum(
            v
            for (n, ls), v in self.samples().items()
            if n == name and all((k, x) in ls for k, x in labels.items())
        )

    def wait_for(self, condition, timeout_s: float = 120, what: str = "") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            if self.process.poll() is not None:
                pytest.fail(
                    f"scorer exited ({self.process.returncode}) waiting for {what}:\n"
                    f"{self.log_text()[-3000:]}"
                )
            time.sleep(0.1)
        pytest.fail(f"timeout waiting for {what}:\n{self.log_text()[-3000:]}")

    def kill9(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def wait_exit(self, timeout_s: float = 180) -> int:
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"scorer did not exit within {timeout_s} s:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._out.close()

    def log_text(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")


def encoded(events: list[dict]) -> list[tuple[bytes, bytes]]:
    encode = AvroSerde("LoanEvent").encode
    return [(e["loan_id"].encode(), encode(e)) for e in events]


def produce(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], rate: float | None = None
) -> None:
    """A plain keyed, idempotent producer partitioning like `produce` (Murmur2, as Java)."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "partitioner": PARTITIONER,
        }
    )
    chunk = 500
    started = time.monotonic()
    for start in range(0, len(records), chunk):
        if rate:
            due = started + start / rate
            time.sleep(max(0.0, due - time.monotonic()))
        for key, value in records[start : start + chunk]:
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0


def produce_in_background(
    bootstrap: str, topic: str, records: list, rate: float
) -> threading.Thread:
    thread = threading.Thread(target=produce, args=(bootstrap, topic, records, rate), daemon=True)
    thread.start()
    return thread


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list:
    """Every committed record of ``topic``: until ``expected`` arrived, plus a grace period
    in which a duplicate would show up."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    messages: list = []
    deadline = time.monotonic() + timeout_s
    grace_until = None
    try:
        while time.monotonic() < deadline:
            messages += [m for m in consumer.consume(2000, timeout=0.5) if not m.error()]
            if len(messages) >= expected and grace_until is None:
                grace_until = time.monotonic() + 1.5
            if grace_until and time.monotonic() > grace_until:
                break
    finally:
        consumer.close()
    return messages


def change_keys(bootstrap: str, topics: Topics, expected: int) -> tuple[Counter, list[dict]]:
    serde = AvroSerde("StrategyChanged")
    records = [
        serde.decode(m.value()) for m in read_all(bootstrap, topics.strategy_changes, expected)
    ]
    return Counter(
        (r["loan_id"], r["source_event_id"], r["new_strategy"]) for r in records
    ), records


def reference_keys(changes: list[dict]) -> Counter:
    return Counter((c["loan_id"], c["source_event_id"], c["new_strategy"]) for c in changes)


def committed_total(bootstrap: str, topics: Topics) -> int:
    # read_uncommitted: do not wait for offsets pending in the killed scorer's open
    # transaction (librdkafka's read_committed default asks for stable offsets only).
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topics.app_id,
            "isolation.level": "read_uncommitted",
        }
    )
    try:
        offsets = consumer.committed(
            [TopicPartition(topics.events, p) for p in range(PARTITIONS)], timeout=30
        )
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in offsets)


def assert_same_changes(got: Counter, want: Counter) -> None:
    missing, extra = want - got, got - want
    assert not missing and not extra, (
        f"{sum(missing.values())} missing, e.g. {list(missing)[:3]}; "
        f"{sum(extra.values())} duplicated/unexpected, e.g. {list(extra)[:3]}"
    )


def assert_same_reasons(records: list[dict], reference: list[dict]) -> None:
    """Every StrategyChanged read from Kafka carries 1-3 reasons and a policy rule, equal to
    the batch reference's for the same decision: codes exactly, contributions within 1e-9."""
    want = {(c["loan_id"], c["source_event_id"]): c for c in reference}
    assert len(records) == len(want)
    for record in records:
        expected = want[(record["loan_id"], record["source_event_id"])]
        assert 1 <= len(record["reasons"]) <= 3, record
        assert record["policy_rule"] == expected["policy_rule"]
        assert record["policy_rule"] == f"table: {record['risk_tier']} x {record['segment']}"
        pairs = [item.split("=") for item in expected["reasons"].split(";")]
        assert [r["code"] for r in record["reasons"]] == [code for code, _ in pairs]
        for got, (_, value) in zip(record["reasons"], pairs, strict=True):
            assert abs(got["contribution"] - float(value)) <= 1e-9
            assert got["text"] and got["feature"]


def assert_alerts_have_reasons(bootstrap: str, topics: Topics) -> None:
    """Every EarlyWarningAlert read from Kafka carries 1-3 reasons."""
    serde = AvroSerde("EarlyWarningAlert")
    alerts = [serde.decode(m.value()) for m in read_all(bootstrap, topics.risk_alerts, 1, 10)]
    assert alerts, "the book raises some loans to HIGH"
    assert all(1 <= len(a["reasons"]) <= 3 for a in alerts)


# -- the tests ---------------------------------------------------------------------------------


def test_parity_with_batch_score_and_promtool_clean_metrics(
    bootstrap_servers: str, book: dict, topics: Topics, scorers, tmp_path: Path
) -> None:
    events = book["events"]
    assert len(book["scores"]) >= 2000 and len(events) >= 20_000
    produce(bootstrap_servers, topics.events, encoded(events))
    scorer = scorers("parity")
    scorer.wait_for(
        lambda: scorer.total("loanrec_events_total") >= len(events), 240, "every event processed"
    )

    # A live scrape passes promtool's linter.
    exposition = requests.get(f"http://127.0.0.1:{scorer.port}/metrics", timeout=5).text
    (tmp_path / "metrics.txt").write_text(exposition)
    lint = subprocess.run(
        ["promtool", "check", "metrics"],
        input=exposition,
        text=True,
        capture_output=True,
        check=False,
    )
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), (
        lint.stdout + lint.stderr
    )
    assert requests.get(f"http://127.0.0.1:{scorer.port}/readyz", timeout=5).status_code == 200
    assert scorer.total("loanrec_events_total", outcome="scored") == len(events)
    assert scorer.wait_exit() == 0

    got, records = change_keys(bootstrap_servers, topics, len(book["changes"]))
    assert_same_changes(got, reference_keys(book["changes"]))
    assert_same_reasons(records, book["changes"])
    assert_alerts_have_reasons(bootstrap_servers, topics)
    last = {}
    for r in sorted(records, key=lambda r: r["source_offset"]):
        last[r["loan_id"]] = r  # per loan: one partition, so offset order is event order
    assert set(last) == set(book["scores"])
    for loan_id, row in book["scores"].items():
        assert last[loan_id]["new_strategy"] == row["strategy"], loan_id
    reference_last = {c["loan_id"]: c for c in book["changes"]}
    for loan_id, change in last.items():
        assert abs(change["risk_score"] - float(reference_last[loan_id]["risk_score"])) <= 1e-9
        assert change["source_offset"] == int(reference_last[loan_id]["source_offset"])
    # Where a loan's last change came with its last event, its score is the batch's final one.
    last_event = {e["loan_id"]: e["event_id"] for e in events}
    final = [loan for loan, c in last.items() if c["source_event_id"] == last_event[loan]]
    assert final
    for loan_id in final:
        assert (
            abs(last[loan_id]["risk_score"] - float(book["scores"][loan_id]["risk_score"])) <= 1e-9
        )


ARMS_LOANS = 300
ARMS_POLICY = """
experiment:
  id: stream-parity
  arms:
    - {name: champion, policy: table, share: 0.5}
    - {name: challenger, policy: learned, share: 0.5, epsilon: 0.2}
"""


def test_parity_with_the_learned_policy_and_arms(
    bootstrap_servers: str,
    book: dict,
    topics: Topics,
    scorers,
    treatment_model: Path,
    tmp_path: Path,
) -> None:
    """Stream = batch with an experiment on (a table champion, a learned challenger that
    explores): the same changes, scores within 1e-9 and the same experiment fields (arm,
    propensity, expected net recovery), on a small part of the book (a few thousand events,
    so it adds seconds, not minutes)."""
    from models.data.adapters import write_jsonl

    loans = sorted(book["scores"])[:ARMS_LOANS]
    wanted = set(loans)
    events = [e for e in book["events"] if e["loan_id"] in wanted]
    log, policy = tmp_path / "events.jsonl", tmp_path / "policy.yaml"
    with open(log, "w") as handle:
        write_jsonl(events, handle)
    policy.write_text((ROOT / "models/serving/default_policy.yaml").read_text() + ARMS_POLICY)
    flags = {"--policy": str(policy), "--strategy-model": str(treatment_model)}
    _cli(
        "score", "--model", str(book["model"]), "--source", "events", "--input", str(log),
        "--out", str(tmp_path / "scores.csv"), "--changes", str(tmp_path / "changes.csv"),
        "--partitions", str(PARTITIONS), *(x for kv in flags.items() for x in kv),
    )  # fmt: skip
    with open(tmp_path / "changes.csv") as handle:
        reference = list(csv.DictReader(handle))
    with open(tmp_path / "scores.csv") as handle:
        final = {row["loan_id"]: row for row in csv.DictReader(handle)}
    assert {c["arm"] for c in reference} == {"champion", "challenger"}
    assert any(c["policy_rule"].startswith("arm challenger: explore") for c in reference)

    produce(bootstrap_servers, topics.events, encoded(events))
    scorer = scorers("arms", **flags)
    scorer.wait_for(
        lambda: scorer.total("loanrec_events_total") >= len(events), 120, "every event processed"
    )
    assert scorer.wait_exit() == 0
    got, records = change_keys(bootstrap_servers, topics, len(reference))
    assert_same_changes(got, reference_keys(reference))
    want = {(c["loan_id"], c["source_event_id"]): c for c in reference}
    last = {}
    for record in records:
        expected = want[(record["loan_id"], record["source_event_id"])]
        assert record["experiment_id"] == expected["experiment_id"] == "stream-parity"
        assert record["arm"] == expected["arm"]
        assert record["policy_rule"] == expected["policy_rule"]
        assert repr(record["propensity"]) == expected["propensity"]
        assert abs(record["risk_score"] - float(expected["risk_score"])) <= 1e-9
        value = record["expected_net_recovery"]
        if value is None:
            assert expected["expected_net_recovery"] == ""
        else:
            assert abs(value - float(expected["expected_net_recovery"])) <= 1e-9
        if record["source_offset"] >= last.get(record["loan_id"], (-1,))[0]:
            last[record["loan_id"]] = (record["source_offset"], record["new_strategy"])
    assert {loan: s for loan, (_, s) in last.items()} == {
        loan: row["strategy"] for loan, row in final.items() if loan in last
    }


def test_kill_9_three_times_loses_and_duplicates_nothing(
    bootstrap_servers: str, book: dict, topics: Topics, scorers
) -> None:
    events = book["events"]
    # Two fifths at 1,000 events/s, then a trickle until the third kill, then the rest: each
    # kill lands mid-stream however long the restarts take (on a loaded machine the whole
    # input at 1,000 events/s was once committed before the third kill).
    killed = threading.Event()
    feeder = threading.Thread(
        target=_feed_until,
        args=(bootstrap_servers, topics.events, encoded(events), killed, 1000, 0.4),
        daemon=True,
    )
    feeder.start()
    rng = random.Random(4)
    # Static membership: a restarted instance takes its predecessor's place in the group at
    # once instead of waiting for the dead member's session to time out.
    static = "group.instance.id=crash-member\n"
    kills = 0
    for _ in range(3):
        scorer = scorers("crash", static)
        scorer.wait_for(lambda s=scorer: s.total("loanrec_events_total") > 0, 90, "progress")
        time.sleep(rng.uniform(0.2, 2.5))
        scorer.kill9()
        kills += 1
        assert committed_total(bootstrap_servers, topics) < len(events), "killed after the end"
    assert kills == 3
    killed.set()
    feeder.join(120)
    final = scorers("crash", static)
    assert final.wait_exit() == 0, final.log_text()[-3000:]
    got, _ = change_keys(bootstrap_servers, topics, len(book["changes"]))
    assert_same_changes(got, reference_keys(book["changes"]))
    assert committed_total(bootstrap_servers, topics) == len(events)


def _feed_until(
    bootstrap: str,
    topic: str,
    records: list,
    done: threading.Event,
    rate: float = 1500,
    first: float = 1 / 3,
) -> None:
    """The ``first`` share of the input at ``rate`` events/s, then a trickle (20 records per
    half second: scorers stay busy, short of their idle exit) until ``done``, then the rest:
    on a busy machine a scorer can take longer to start than the whole input takes to feed,
    and what the test waits for (a second instance joining, a kill) would come after the
    input was consumed."""
    cut = int(len(records) * first)
    produce(bootstrap, topic, records[:cut], rate=rate)
    while not done.wait(0.5) and cut < len(records):
        produce(bootstrap, topic, records[cut : cut + 20])
        cut += 20
    produce(bootstrap, topic, records[cut:], rate=rate)


def test_rebalance_moves_state_through_the_changelog(
    bootstrap_servers: str, book: dict, topics: Topics, scorers
) -> None:
    events = book["events"]
    joined = threading.Event()
    feeder = threading.Thread(
        target=_feed_until,
        args=(bootstrap_servers, topics.events, encoded(events), joined),
        daemon=True,
    )
    feeder.start()
    first = scorers("a")
    first.wait_for(lambda: first.total("loanrec_events_total") > 2000, 90, "first progress")
    second = scorers("b")
    second.wait_for(
        lambda: second.total("loanrec_assigned_partitions") > 0, 90, "the second to join"
    )
    joined.set()
    second.wait_for(
        lambda: second.total("loanrec_events_total") > 0, 90, "the second instance to process"
    )
    restored_by_second = second.total("loanrec_restored_loans_total")
    # A static member does not leave the group on close: its partitions go back to the first
    # instance once its session times out (FAST_GROUP: 6 s).
    second.stop()
    assert second.process.returncode == 0, second.log_text()[-3000:]
    feeder.join(120)
    assert first.wait_exit() == 0, first.log_text()[-3000:]

    assert restored_by_second > 0, "the second instance restored no loan from the changelog"
    assert '"event": "state_restored"' in first.log_text()
    assert first.log_text().count('"event": "partitions_assigned"') >= 3  # start, join, leave
    got, _ = change_keys(bootstrap_servers, topics, len(book["changes"]))
    assert_same_changes(got, reference_keys(book["changes"]))


POISON_PER_KIND = 100  # x 10 kinds = 1,000 malformed records


def poisoned_stream(events: list[dict], rng: random.Random) -> tuple[list, Counter, int]:
    """Valid records with 1,000 malformed ones mixed in; returns (records, expected DLQ
    reasons, duplicates)."""
    from schemas.serde import MAGIC

    serde = AvroSerde("LoanEvent")
    records = encoded(events)
    opened = [(i, e) for i, e in enumerate(events) if e["body"][0].endswith("LoanOpened")]
    inserts: list[tuple[int, tuple[bytes, bytes | None]]] = []  # (after index, record)
    reasons: Counter[str] = Counter()
    day = 86_400_000

    def bad_event(event: dict, body_type: str, body: dict) -> bytes:
        return serde.encode(
            {
                **event,
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "occurred_at": event["occurred_at"] + day,
                "body": (f"loanrec.events.{body_type}", body),
            }
        )

    for n in range(POISON_PER_KIND):
        i, e = opened[rng.randrange(len(opened))]
        key = e["loan_id"].encode()
        opened_day = e["occurred_at"] // day
        payment = {
            "installment_due_date": opened_day + 30,
            "amount_due": 100.0,
            "amount_paid": -50.0,
            "outstanding_after": 1000.0,
        }
        missed = {
            "installment_due_date": opened_day + 30,
            "amount_due": -1.0,
            "days_past_due": 3,
            "outstanding": 1000.0,
        }
        ghost = {**e, "loan_id": f"GHOST-{n}", "event_id": str(uuid.uuid4())}
        j = rng.randrange(len(records))
        kinds = [
            ("bad_header", key, rng.randbytes(rng.randrange(1, 40))),
            ("bad_header", key, b"\xc3"),
            ("undecodable", key, records[j][1][:12]),
            ("undecodable", key, records[j][1] + b"\x00\x01"),
            ("unknown_fingerprint", key, MAGIC + rng.randbytes(8) + records[j][1][10:]),
            ("invalid_amount", key, bad_event(e, "PaymentReceived", payment)),
            ("invalid_amount", key, bad_event(e, "PaymentMissed", missed)),
            (
                "impossible_date",
                key,
                bad_event(
                    e,
                    "PaymentReceived",
                    {**payment, "amount_paid": 100.0, "installment_due_date": opened_day - 4000},
                ),
            ),
            (
                "unknown_loan",
                f"GHOST-{n}".encode(),
                serde.encode(
                    {
                        **ghost,
                        "body": ("loanrec.events.PaymentMissed", missed | {"amount_due": 5.0}),
                    }
                ),
            ),
        ]
        for reason, k, value in kinds:
            inserts.append((i, (k, value)))
            reasons[reason] += 1
        d = rng.randrange(len(records))  # a producer retry: the same record right after
        inserts.append((d, records[d]))
    by_position: dict[int, list] = {}
    for position, record in inserts:
        by_position.setdefault(position, []).append(record)
    mixed = []
    for i, record in enumerate(records):
        mixed.append(record)
        mixed += by_position.get(i, [])
    return mixed, reasons, POISON_PER_KIND


def test_poison_records_go_to_the_dlq_and_the_stream_goes_on(
    bootstrap_servers: str, book: dict, topics: Topics, scorers, trained_model: Path
) -> None:
    from consumer.reference import score_events
    from models.serving.bundle import ModelBundle
    from models.serving.policy import Policy

    events = [e for e in book["events"] if int(e["loan_id"].rsplit("-", 1)[1]) < 400]
    records, reasons, duplicates = poisoned_stream(events, random.Random(9))
    assert len(records) - len(events) == 10 * POISON_PER_KIND
    produce(bootstrap_servers, topics.events, records)
    scorer = scorers("poison")
    expected_dlq = sum(reasons.values())
    scorer.wait_for(
        lambda: scorer.total("loanrec_events_total") >= len(records), 120, "every record processed"
    )
    assert scorer.total("loanrec_events_total", outcome="scored") == len(events)
    assert scorer.total("loanrec_events_total", outcome="duplicate") == duplicates
    assert scorer.total("loanrec_events_total", outcome="dlq") == expected_dlq
    assert scorer.total("loanrec_dlq_total") == expected_dlq
    assert scorer.wait_exit() == 0
    assert scorer.log_text().count('"event": "started"') == 1  # never restarted

    dead = read_all(bootstrap_servers, topics.dlq, expected_dlq)
    assert len(dead) == expected_dlq
    got_reasons = Counter(dict(m.headers())["error.reason"].decode() for m in dead)
    assert got_reasons == reasons
    originals = Counter(records)
    for m in dead:
        headers = dict(m.headers())
        assert originals[(m.key(), m.value())] > 0  # original key and bytes
        assert headers["source.topic"].decode() == topics.events
        assert int(headers["source.offset"].decode()) >= 0 and headers["error.message"]

    reference = score_events(events, ModelBundle.load(trained_model), Policy.load(None), PARTITIONS)
    got, _ = change_keys(bootstrap_servers, topics, len(reference.changes))
    assert_same_changes(got, reference_keys([asdict(c) for c in reference.changes]))
