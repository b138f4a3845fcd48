"""Shared benchmark plumbing: one local broker, topics, and progress measured from outside.

Throughput of every contender (passthrough, scorer EOS, scorer ALO) is measured the same way:
by polling the consumer group's committed offsets, from the first commit to the commit that
reaches the end of the input. Start-up (model load, restore, group join) is excluded alike.

Also here, for every bench module: the CLI runner, the small model they share, the scorer's
command line, its readiness probe, and a read-to-the-end helper for output topics.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

if TYPE_CHECKING:
    from consumer.processor import PartitionProcessor

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "loan_recovery.cli"]
PARTITIONS = 6


def active_kernels(processor: PartitionProcessor) -> dict[str, str]:
    """Per compiled kernel, what ``processor`` runs: ``"compiled"`` or ``"reference"`` (the
    Python twin). Read off the objects themselves, since each falls back on its own: not
    built, ``LOAN_RECOVERY_PURE_PYTHON=1``, or -- the segmenter -- an interpreter whose ``sum``
    the kernel does not replay."""
    forest = getattr(processor.bundle._predict, "__self__", None)  # FastCalibratedForest
    running = {
        "event": processor._kernel is not None,
        "forest": bool(getattr(forest, "native", False)),
        "segmenter": processor.store.segmenter.native,
        "codec": processor.store._state_codec.compiled,
    }
    return {name: "compiled" if on else "reference" for name, on in running.items()}


def runtime(model: Path) -> dict[str, Any]:
    """The interpreter and the kernels a scorer on ``model`` runs with here (the benchmarks'
    scorers are this interpreter's subprocesses, with the same environment)."""
    from consumer.processor import PartitionProcessor
    from models.serving.bundle import ModelBundle
    from models.serving.policy import Policy

    processor = PartitionProcessor(ModelBundle.load(model), Policy.load(), partition=0)
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "kernels": active_kernels(processor),
    }


def cli(*args: str) -> None:
    """Run ``loan-recovery ARGS`` (this interpreter), quietly; raise if it fails."""
    subprocess.run([*CLI, *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def train_small_model(work: Path) -> Path:
    """A bundle trained on a 3,000-loan synthetic book (seed 3): the benchmarks' model."""
    cli("generate", "--loans", "3000", "--seed", "3", "--out", str(work / "train-book"))
    cli(
        "train",
        "--source",
        "seed",
        "--input",
        str(work / "train-book" / "loans.csv"),
        "--out",
        str(work / "model"),
    )
    return work / "model"


def scorer_command(
    bootstrap: str,
    model: Path,
    topic: str,
    group: str,
    guarantee: str,
    metrics_port: int = 0,
    extra: Sequence[str] = (),
) -> list[str]:
    """``loan-recovery serve`` on ``topic`` with its own output topics and changelog (created
    here, 6 partitions) named after ``group``; the app id is ``<group>-app``; ``extra``: more
    ``serve`` options (the policy and the learned policy of the strategy part)."""
    from producer.admin import create_topics
    from schemas.topics import Topics

    app_id = f"{group}-app"
    topics = Topics(
        events=topic,
        strategy_changes=f"{group}.changes",
        risk_alerts=f"{group}.alerts",
        dlq=f"{group}.dlq",
        app_id=app_id,
    )
    create_topics(bootstrap, topics, PARTITIONS)
    return [
        *CLI,
        "serve",
        "--model",
        str(model),
        "--bootstrap-servers",
        bootstrap,
        "--app-id",
        app_id,
        "--group-id",
        group,
        "--instance-id",
        group,
        "--input-topic",
        topic,
        "--strategy-topic",
        topics.strategy_changes,
        "--alerts-topic",
        topics.risk_alerts,
        "--dlq-topic",
        topics.dlq,
        "--guarantee",
        guarantee,
        "--metrics-port",
        str(metrics_port),
        *extra,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, process: subprocess.Popen, timeout_s: float = 120.0) -> float:
    """Poll the scorer's ``/readyz`` (group joined, partitions assigned, state restored) until
    it answers 200; returns the seconds waited. Raises if the process exits or time runs out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"scorer exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
                if reply.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"scorer not ready within {timeout_s:.0f} s")


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 30 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def read_topic(
    bootstrap: str,
    topic: str,
    on_message: Callable[[object], None],
    read_committed: bool = True,
    timeout_s: float = 300.0,
) -> int:
    """Call ``on_message`` for every record of ``topic`` from the beginning to its current end
    (the last stable offset when ``read_committed``); returns the records read."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        remaining = set()
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                remaining.add(p)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in remaining])
        count = 0
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(remaining)} not read to the end")
            for message in consumer.consume(1000, timeout=0.2):
                error = message.error()
                if error is None:
                    on_message(message)
                    count += 1
                elif error.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(message.partition())
                else:
                    raise RuntimeError(f"{topic}: {error}")
        return count
    finally:
        consumer.close()


def standalone_parser(doc: str | None) -> argparse.ArgumentParser:
    """The command line every standalone bench module shares: its own options are added to
    ``--bootstrap-servers`` (default: a fresh local broker) and ``--json``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--bootstrap-servers", default=None, help="default: a fresh local broker")
    parser.add_argument("--json", action="store_true")
    return parser


@contextmanager
def broker_and_workdir(explicit: str | None) -> Iterator[tuple[str, Path]]:
    """(bootstrap servers, a temporary work directory), both cleaned up after."""
    with benchmark_broker(explicit) as bootstrap, tempfile.TemporaryDirectory() as tmp:
        yield bootstrap, Path(tmp)


@contextmanager
def benchmark_broker(explicit: str | None = None) -> Iterator[str]:
    """``explicit``, else ``KAFKA_BOOTSTRAP_SERVERS``, else a fresh local broker stopped after."""
    external = explicit or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    from loan_recovery.broker import LocalBroker

    data_dir = Path(tempfile.mkdtemp(prefix="loanrec-bench-broker-"))
    broker = LocalBroker(data_dir)
    try:
        yield broker.start().bootstrap_servers
    finally:
        broker.stop()
        pauses = np.asarray(broker.gc_pauses_ms())
        if pauses.size:  # every figure above waited on these: say how long they were
            p50, p99 = np.percentile(pauses, [50, 99])
            print(
                f"broker GC: {pauses.size} pauses, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
                f"max {pauses.max():.1f} ms, total {pauses.sum() / 1000:.1f} s",
                file=sys.stderr,
            )
        shutil.rmtree(data_dir, ignore_errors=True)


def create_topics(
    bootstrap: str, names: list[str], partitions: int, config: dict[str, str] | None = None
) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, partitions, 1, config=config or {}) for n in names])
    for future in futures.values():
        future.result(timeout=30)


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
    finally:
        consumer.close()


def topic_count(bootstrap: str, topic: str) -> int:
    return sum(end_offsets(bootstrap, topic).values())


@dataclass
class CommitProgress:
    events: int
    first_commit_at: float
    done_at: float

    @property
    def seconds(self) -> float:
        return self.done_at - self.first_commit_at

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


_COORDINATOR_MOVING = (
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError._TIMED_OUT,
)


def watch_group_until_done(
    bootstrap: str,
    group: str,
    topic: str,
    ends: dict[int, int],
    timeout_s: float = 600.0,
    poll_s: float = 0.05,
) -> CommitProgress:
    """Poll ``group``'s committed offsets on ``topic`` until they reach ``ends``.

    The events between the first observed commit and the end are what the rate counts, so the
    clock starts when work is visibly under way for every contender.
    """
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    partitions = [TopicPartition(topic, p) for p in ends]
    total = sum(ends.values())
    first: tuple[float, int] | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                committed = watcher.committed(partitions, timeout=10)
            except KafkaException as exc:
                # The group's coordinator moving or loading (NOT_COORDINATOR right after the
                # broker started, seen once): ask again, as a client would.
                error = exc.args[0]
                if not (error.retriable() or error.code() in _COORDINATOR_MOVING):
                    raise
                time.sleep(poll_s)
                continue
            done = sum(max(tp.offset, 0) for tp in committed)
            now = time.perf_counter()
            if done > 0 and first is None:
                first = (now, done)
            if done >= total and first is not None:
                return CommitProgress(total - first[1], first[0], now)
            time.sleep(poll_s)
    finally:
        watcher.close()
    raise TimeoutError(f"group {group} did not finish {topic} within {timeout_s:.0f} s")
