"""`loan-recovery produce` end to end: real files from the project's generator, the real broker,
the real CLI process (signals, exit codes, JSON summary)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "loan_recovery.cli", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)  # fmt: skip


def topic_count(bootstrap: str, topic: str) -> int:
    """Messages on a topic: the sum over partitions of high - low watermark."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "count"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(hi - lo for lo, hi in (
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for p in partitions))  # fmt: skip
    finally:
        consumer.close()


# -- errors: one line naming the setting and the fix, non-zero exit ---------------------------


def test_missing_topic_fails_with_one_clear_line(bootstrap_servers: str, tmp_path: Path) -> None:
    result = run_cli("produce", "--source", "events", "--input", str(tmp_path / "x.jsonl"),
                     "--bootstrap-servers", bootstrap_servers, "--topic", "no-such-topic")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: topic no-such-topic does not exist on {bootstrap_servers}: run "
        "`loan-recovery topics create` (or pass --topic)"
    ]


def test_bad_properties_file_is_named_with_the_fix(tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text("bootstrap.servers=localhost:1\nacks=1\n")
    result = run_cli("produce", "--source", "events", "--input", "x", "--kafka-config", str(props))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: --kafka-config {props}: acks must stay 'all' "
                                     "(no silently lost events)")  # fmt: skip


def test_dry_run_needs_out_and_history_needs_input(tmp_path: Path) -> None:
    result = run_cli("produce", "--source", "seed", "--dry-run")
    assert result.returncode == 2 and "--dry-run needs --out" in result.stderr
    result = run_cli("produce", "--source", "seed", "--dry-run", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "--source seed needs --input" in result.stderr
