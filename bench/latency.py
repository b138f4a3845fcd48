"""End-to-end decision latency of the exactly-once scorer under a steady load.

What a collections team waits for: from the moment an event is produced to the moment the
``StrategyChanged`` it causes can be read by a ``read_committed`` consumer (downstream systems
only ever see committed decisions). That includes the producer's batching, the scorer's poll,
scoring, and the wait for its transaction (commit interval 50 ms) to commit.

How: a fresh synthetic book, Avro-encoded beforehand by the producer's encoder, is produced at
a fixed rate in 1 ms slices (``make bench`` uses half the scorer's measured exactly-once
maximum, so the scorer is loaded but never saturated) into a fresh 6-partition topic, while
``loan-recovery serve --guarantee exactly-once`` consumes it. The load generator encodes
nothing on the clock: encoding JSON to Avro per event at tens of thousands of events/s would
take a core of the two that the scorer and the broker need.

The scorer is started first and measured only once its ``/readyz`` answers (group joined,
state restored). The first ``WARMUP_S`` seconds of input are produced at the same rate but
left out of the percentiles: a freshly started scorer spends its first seconds on one-off
costs (first transactions, first metadata requests, a book of loans all new to it) and then
catches up. That transient is reported on its own (``warmup_*``); the percentiles, over the
next ``DURATION_S`` seconds, are the steady state a collections team lives with. (In one
``make bench`` run with every event counted, p99 was 287 ms against 170-190 ms steady.)

Why 40 s: the broker and the scorer warm up to the paced workload after ``make bench``'s
throughput part (big produce and fetch batches), and 20 s was not enough. In ``make bench``'s
own order on one broker (session 12, ``python -m bench.warmup``: throughput, this run with 40 s of
warm-up, the arms' throughput, their run with 40 s; p99 per 5 s of input; two rounds, each on a
fresh broker), the p99 over seconds 20-45 of a run against 40-65 of the same run was:

=======================  ============  ============
run                      round 1       round 2
=======================  ============  ============
table policy             334 -> 116    121 -> 127
arms                     181 -> 155    150 -> 113
=======================  ============  ============

In round 1 the table's first 35 s had p99s of 565, 829, 324, 266, 323, 391 and 206 ms, and
99-128 ms from then on. Session 11 had found the broker's C2 JIT compiler at 19-42 % of a core
for ~40 s after the workload changed (3-13 % in the next run on the same broker).
``p99_by_5s_ms`` reports that series for every run, warm-up included, and ``p50_by_third_ms``
shows whether the measured window was steady.

A reader assigned to the strategy topic stamps each record with the wall-clock time it
became visible; the latency of a change is that time minus the Kafka ``CreateTime`` of its
source record (``source_partition``/``source_offset``), which the load generator set when it
handed the event to librdkafka. Percentiles over all measured changes, with numpy.

Run alone (starts its own broker and trains its own small model)::

    python -m bench.latency --rate 8000 --json
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.common import (
    PARTITIONS,
    ROOT,
    broker_and_workdir,
    cli,
    create_topics,
    end_offsets,
    free_port,
    read_topic,
    scorer_command,
    standalone_parser,
    stop_process,
    train_small_model,
    wait_ready,
    watch_group_until_done,
)
from schemas.client_config import PARTITIONER

DURATION_S = 25.0  # measured
WARMUP_S = 40.0  # produced first at the same rate, excluded from the percentiles (see above)
EVENTS_PER_LOAN = 12  # a synthetic loan has ~15 events: this many loans always suffice


@dataclass
class LatencyResult:
    rate: float  # requested events/s
    events: int  # produced
    produced_eps: float  # the rate the producer achieved (its own summary)
    changes: int  # StrategyChanged records measured
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    ready_wait_s: float  # scorer start -> /readyz (excluded from the figures)
    warmup_s: float = WARMUP_S  # of input at the same rate before the measured window
    # The warm-up's own percentiles: a fresh process catching up with its first seconds.
    warmup_p50_ms: float = 0.0
    warmup_p99_ms: float = 0.0
    warmup_max_ms: float = 0.0
    # p50 of the first, middle and last third of the run: flat if the scorer kept up, rising
    # if a backlog built (then the rate was above what the scorer sustains here).
    p50_by_third_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # Where the time goes (p50): produce -> the scorer's decision (its wall clock when it
    # processed the batch: producer batching, fetch, poll), and decision -> visible (scoring
    # the rest of the batch, waiting for the commit interval, the commit, the reader's fetch).
    p50_to_decision_ms: float = 0.0
    p50_decision_to_visible_ms: float = 0.0
    # The tail's parts (p99 of each part on its own: they need not add up to the total's).
    p99_to_decision_ms: float = 0.0
    p99_decision_to_visible_ms: float = 0.0
    # The scorer's commits over the whole run, warm-up included (loanrec_commit_seconds):
    # how many, their mean, and the share that took longer than 50 / 100 / 250 ms.
    commits: int = 0
    commit_mean_ms: float = 0.0
    commits_over_ms: dict[str, float] = field(default_factory=dict)
    # p99 of each 5 s of input (by produce time), warm-up included: the start-up transient's
    # shape, and where the measured window begins (index warmup_s / 5).
    p99_by_5s_ms: tuple[float, ...] = ()


class VisibilityWatcher(threading.Thread):
    """Reads a topic with ``read_committed`` from the beginning and stamps every record with
    the wall-clock ms at which ``consume`` returned it."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="visibility-watcher", daemon=True)
        self.seen: list[tuple[bytes, float]] = []
        self.last_record_at = time.monotonic()
        self._stop_flag = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-latency-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 5,
            }
        )
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
        )

    def run(self) -> None:
        try:
            consume = self._consumer.consume
            while not self._stop_flag.is_set():
                # consume(n, timeout) waits for n records or the timeout: one blocking call
                # for 1000 stamped every record up to 20 ms late. Take what has arrived, and
                # only if nothing has, wait for the first record.
                batch = consume(1000, timeout=0) or consume(1, timeout=0.02)
                now_ms = time.time() * 1000.0
                fresh = [(m.value(), now_ms) for m in batch if m.error() is None]
                if fresh:
                    self.seen += fresh
                    self.last_record_at = time.monotonic()
        finally:
            self._consumer.close()

    def stop_when_quiet(self, quiet_s: float = 1.5, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() - self.last_record_at < quiet_s and time.monotonic() < deadline:
            time.sleep(0.1)
        self._stop_flag.set()
        self.join(30)


def make_book(work: Path, events: int, seed: int = 21) -> Path:
    loans = max(1000, events // EVENTS_PER_LOAN)
    cli("generate", "--loans", str(loans), "--seed", str(seed), "--out", str(work / "lat-book"))
    return work / "lat-book" / "events.jsonl"


def encoded_events(book: Path, events: int) -> list[tuple[bytes, bytes]]:
    """The book's first ``events`` events as (key, Avro value), encoded before the clock starts
    (through the producer's own encoder), so that generating load costs the machine little:
    the scorer, the broker and the load share two cores."""
    from producer.encoding import EventEncoder
    from producer.sources import open_history

    encode = EventEncoder().encode
    source = open_history("events", book)
    return [encode(event) for event, _ in zip(source.events, range(events), strict=False)]


def produce_paced(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], rate: float
) -> dict:
    """Send ``records`` at ``rate`` events/s, in 1 ms slices (the producer's CreateTime of each
    record is when it was handed over, which is where latency is measured from)."""
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "partitioner": PARTITIONER}
    )
    # Connected, with the topic's metadata, before the clock starts: the CreateTime of the
    # first events must not include the load generator's own start-up (which, measured, made
    # the first second of a run look like a scorer backlog of half a second).
    producer.list_topics(topic, timeout=30)
    chunk = max(1, round(rate / 1000))
    started = time.perf_counter()
    for first in range(0, len(records), chunk):
        delay = started + first / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        for key, value in records[first : first + chunk]:
            producer.produce(topic, value, key)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("the load generator could not deliver every event within 60 s")
    elapsed = time.perf_counter() - started
    return {"sent": len(records), "events_per_s": len(records) / elapsed}


def latencies_ms(bootstrap: str, input_topic: str, seen: list[tuple[bytes, float]]) -> np.ndarray:
    """One row per StrategyChanged record, in the order their sources were produced: (the
    source's CreateTime, visibility time minus it, the part of that up to the scorer's
    ``decided_at``)."""
    from schemas import AvroSerde

    created: dict[tuple[int, int], int] = {}

    def remember(message: object) -> None:
        created[(message.partition(), message.offset())] = message.timestamp()[1]

    read_topic(bootstrap, input_topic, remember)
    serde = AvroSerde("StrategyChanged")
    rows = []
    for value, seen_ms in seen:
        change = serde.decode(value)
        produced_ms = created[(change["source_partition"], change["source_offset"])]
        rows.append((produced_ms, seen_ms - produced_ms, change["decided_at"] - produced_ms))
    rows.sort()
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def commit_times(port: int) -> tuple[int, float, dict[str, float]]:
    """The scorer's ``loanrec_commit_seconds`` histogram, read from its ``/metrics``: commits,
    their mean in ms, and the share of commits over each of 50, 100 and 250 ms."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    buckets: dict[float, float] = {}
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "loanrec_commit_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    if not count:
        return 0, 0.0, {}
    over = {f"{le * 1000:g}": round(1 - buckets[le] / count, 4) for le in (0.05, 0.1, 0.25)}
    return int(count), total / count * 1000, over


def measure_latency(
    bootstrap: str,
    model: Path,
    rate: float,
    work: Path,
    duration_s: float = DURATION_S,
    warmup_s: float = WARMUP_S,
    extra: Sequence[str] = (),
) -> LatencyResult:
    """Produce ``rate`` events/s for ``warmup_s + duration_s`` to a ready exactly-once scorer
    and measure the changes of the last ``duration_s``; see above."""
    events = int(rate * (warmup_s + duration_s))
    records = encoded_events(make_book(work, events), events)
    topic = f"bench.latency.{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [topic], PARTITIONS)
    group = f"bench-latency-{uuid.uuid4().hex[:6]}"
    port = free_port()
    command = scorer_command(
        bootstrap, model, topic, group, "exactly-once", metrics_port=port, extra=extra
    )
    scorer = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    watcher = VisibilityWatcher(bootstrap, f"{group}.changes")
    try:
        ready_wait = wait_ready(port, scorer)
        watcher.start()
        summary = produce_paced(bootstrap, topic, records, rate)
        watch_group_until_done(bootstrap, group, topic, end_offsets(bootstrap, topic))
        watcher.stop_when_quiet()
        commits = commit_times(port)
    finally:
        stop_process(scorer)
        if watcher.is_alive():
            watcher.stop_when_quiet(quiet_s=0)
    table = latencies_ms(bootstrap, topic, watcher.seen)
    by_5s = p99_by_window(table, 5.0)
    measured = table[:, 0] >= table[0, 0] + warmup_s * 1000
    warmup, table = table[~measured, 1], table[measured]
    lat, to_decision = table[:, 1], table[:, 2]
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    thirds = tuple(float(np.percentile(part, 50)) for part in np.array_split(lat, 3))
    return LatencyResult(
        rate,
        summary["sent"],
        summary["events_per_s"],
        len(lat),
        float(p50),
        float(p95),
        float(p99),
        float(lat.max()),
        ready_wait,
        warmup_s,
        float(np.percentile(warmup, 50)),
        float(np.percentile(warmup, 99)),
        float(warmup.max()),
        thirds,  # type: ignore[arg-type]
        float(np.percentile(to_decision, 50)),
        float(np.percentile(lat - to_decision, 50)),
        float(np.percentile(to_decision, 99)),
        float(np.percentile(lat - to_decision, 99)),
        *commits,
        by_5s,
    )


def p99_by_window(table: np.ndarray, window_s: float) -> tuple[float, ...]:
    """p99 latency of each ``window_s`` of input by produce time (``table``: rows of produce
    time ms, latency ms, ...), from the first change on; an empty window is skipped."""
    window = ((table[:, 0] - table[0, 0]) // (window_s * 1000)).astype(np.int64)
    return tuple(float(np.percentile(table[window == w, 1], 99)) for w in np.unique(window))


def main() -> None:
    parser = standalone_parser(__doc__)
    parser.add_argument("--rate", type=float, default=8000.0, help="input events/s")
    parser.add_argument(
        "--duration", type=float, default=DURATION_S, help="seconds of measured input"
    )
    parser.add_argument(
        "--warmup", type=float, default=WARMUP_S, help="seconds of input before it (not measured)"
    )
    args = parser.parse_args()
    with broker_and_workdir(args.bootstrap_servers) as (bootstrap, work):
        model = train_small_model(work)
        result = measure_latency(bootstrap, model, args.rate, work, args.duration, args.warmup)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print(
            f"latency at {result.rate:,.0f} ev/s over {result.changes:,} strategy changes: "
            f"p50 {result.latency_p50_ms:.0f} ms, p95 {result.latency_p95_ms:.0f} ms, "
            f"p99 {result.latency_p99_ms:.0f} ms"
        )


if __name__ == "__main__":
    main()
