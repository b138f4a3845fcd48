"""`loan-recovery produce` end to end: real files from the project's generator, the real broker,
the real CLI process (signals, exit codes, JSON summary)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from cli_runner import run_cli
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

ROOT = Path(__file__).resolve().parents[2]


_NOT_READY = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
)


def topic_count(bootstrap: str, topic: str, attempts: int = 20) -> int:
    """Messages on a topic: the sum over partitions of high - low watermark. A topic created a
    moment ago can still answer NOT_LEADER_FOR_PARTITION while its leaders are elected (seen
    on a busy machine): those errors are retried, briefly."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "count"})
    try:
        for attempt in range(attempts):
            try:
                partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
                return sum(
                    hi - lo
                    for lo, hi in (
                        consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                        for p in partitions
                    )
                )
            except KafkaException as error:
                if error.args[0].code() not in _NOT_READY or attempt == attempts - 1:
                    raise
                time.sleep(0.25)
        raise AssertionError("unreachable")
    finally:
        consumer.close()


# -- errors: one line naming the setting and the fix, non-zero exit ---------------------------


def test_missing_topic_fails_with_one_clear_line(bootstrap_servers: str, tmp_path: Path) -> None:
    result = run_cli(
        "produce",
        "--source",
        "events",
        "--input",
        str(tmp_path / "x.jsonl"),
        "--bootstrap-servers",
        bootstrap_servers,
        "--topic",
        "no-such-topic",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: topic no-such-topic does not exist on {bootstrap_servers}: run "
        "`loan-recovery topics create` (or pass --topic)"
    ]


def test_property_librdkafka_refuses_is_named(bootstrap_servers: str, tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text(f"bootstrap.servers={bootstrap_servers}\nsasl.mechanism.typo=PLAIN\n")
    result = run_cli("produce", "--source", "events", "--input", "x", "--kafka-config", str(props))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: --kafka-config {props}: No such configuration "
        'property: "sasl.mechanism.typo"; fix or remove that '
        "property"
    )


def test_broken_export_fails_with_the_adapters_line(
    bootstrap_servers: str, make_topic, tmp_path: Path
) -> None:
    export = tmp_path / "export.csv"
    export.write_text("Loan_ID,Loan_Amount\nL1,1000\n")
    result = run_cli(
        "produce",
        "--source",
        "seed",
        "--input",
        str(export),
        "--bootstrap-servers",
        bootstrap_servers,
        "--topic",
        make_topic("broken"),
    )
    assert result.returncode == 2
    # librdkafka's own log lines ("%4|...|GETPID|... Coordinator load in progress: retrying",
    # from a broker started seconds ago) are not the CLI's: the CLI's is the one other line.
    (line,) = [x for x in result.stderr.strip().splitlines() if not x.startswith("%")]
    assert line.startswith(f"error: {export}: required column") and "add it to the export" in line


# -- replays of real files ---------------------------------------------------------------------


def test_seed_csv_replay_acknowledges_every_event(
    bootstrap_servers: str, make_topic, synthetic_files
) -> None:
    topic = make_topic("seed", partitions=6)
    result = run_cli(
        "produce",
        "--source",
        "seed",
        "--input",
        str(synthetic_files["csv"]),
        "--bootstrap-servers",
        bootstrap_servers,
        "--topic",
        topic,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["source"] == "seed"
    assert summary["read"] == summary["sent"] == summary["acknowledged"]
    assert summary["acknowledged"] == synthetic_files["events"]
    assert summary["by_type"]["LoanOpened"] == 300
    assert topic_count(bootstrap_servers, topic) == summary["acknowledged"]


def test_human_summary_and_rate_limit(bootstrap_servers: str, make_topic, synthetic_files):
    topic = make_topic("rated")
    started = time.monotonic()
    result = run_cli(
        "produce",
        "--source",
        "events",
        "--input",
        str(synthetic_files["jsonl"]),
        "--bootstrap-servers",
        bootstrap_servers,
        "--topic",
        topic,
        "--rate",
        "1000",
        "--limit",
        "1500",
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started > 1.3  # 1500 events at 1000/s, the first 100 free
    assert "produce summary" in result.stdout and "acknowledged" in result.stdout
    assert re.search(r"acknowledged\s+│\s+1,500", result.stdout), result.stdout
    assert topic_count(bootstrap_servers, topic) == 1500


def _start(*args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "loan_recovery.cli", "produce", *args]
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _stop(
    process: subprocess.Popen, signum: int, after_s: float, bootstrap: str, topic: str
) -> tuple[int, str, str]:
    """Signal ``process`` ``after_s`` seconds after its first record reached ``topic``: on a
    busy machine the interpreter's start-up alone can outlast a fixed sleep, and a signal
    during the imports tests nothing of the producer."""
    deadline = time.monotonic() + 120
    try:  # the producer never outlives the test, whatever fails here
        while topic_count(bootstrap, topic) == 0 and process.poll() is None:
            assert time.monotonic() < deadline, "the producer sent nothing within 120 s"
            time.sleep(0.2)
        time.sleep(after_s)
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out, err


def test_live_synthetic_stream_stops_on_sigterm_and_flushes(
    bootstrap_servers: str, make_topic
) -> None:
    topic = make_topic("live", partitions=3)
    process = _start(
        "--source",
        "synthetic",
        "--loans",
        "40",
        "--seed",
        "3",
        "--months-per-second",
        "6",
        "--bootstrap-servers",
        bootstrap_servers,
        "--topic",
        topic,
        "--json",
    )
    code, out, err = _stop(process, signal.SIGTERM, 2.0, bootstrap_servers, topic)
    assert code == 0, err  # stopping a live stream is its normal end
    summary = json.loads(out)
    assert summary["interrupted"] and summary["ok"] and summary["seed"] == 3
    assert summary["sent"] == summary["acknowledged"] > 40  # openings plus some months
    assert topic_count(bootstrap_servers, topic) == summary["sent"]


def test_interrupted_replay_reports_and_exits_130(
    bootstrap_servers: str, make_topic, synthetic_files
) -> None:
    topic = make_topic("sigint")
    process = _start(
        "--source",
        "events",
        "--input",
        str(synthetic_files["jsonl"]),
        "--bootstrap-servers",
        bootstrap_servers,
        "--topic",
        topic,
        "--rate",
        "300",
        "--json",
    )
    code, out, err = _stop(process, signal.SIGINT, 1.0, bootstrap_servers, topic)
    assert code == 130, err
    summary = json.loads(out)
    assert summary["interrupted"] and summary["failed"] == summary["rejected"] == 0
    assert 0 < summary["sent"] < synthetic_files["events"]
    assert topic_count(bootstrap_servers, topic) == summary["acknowledged"] == summary["sent"]


# -- acceptance: a 100k-event synthetic book ---------------------------------------------------


def test_replaying_a_100k_event_book_lands_every_event(
    bootstrap_servers: str, make_topic, tmp_path: Path
) -> None:
    from models.data.adapters import write_jsonl
    from models.data.synthetic import generate_book

    _, events, _ = generate_book(6_600, seed=100)  # ~15 events per loan
    assert len(events) >= 100_000
    log = tmp_path / "book.jsonl"
    with open(log, "w") as handle:
        write_jsonl(events, handle)
    topic = make_topic("acceptance", partitions=6)
    started = time.monotonic()
    result = run_cli(
        "produce",
        "--source",
        "events",
        "--input",
        str(log),
        "--bootstrap-servers",
        bootstrap_servers,
        "--topic",
        topic,
        "--json",
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"]
    assert summary["read"] == summary["sent"] == summary["acknowledged"] == len(events)
    assert topic_count(bootstrap_servers, topic) == len(events)
    print(
        f"100k replay: {len(events)} events, produce {summary['seconds']:.2f} s "
        f"({summary['events_per_s']:,.0f}/s), whole command {elapsed:.2f} s"
    )
