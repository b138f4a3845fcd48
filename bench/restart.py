"""Restart after a crash: ``kill -9`` at 30 % of a replay, an immediate restart with the same
``--instance-id``, and the seconds until the group has committed the end of the input.

What an operator waits for after a pod is killed and comes back. The scorer runs with static
group membership (``group.instance.id`` = its instance id, ARCHITECTURE.md §8), so the restarted
process takes the dead member's place in the group at once instead of waiting for its session
to time out (``session.timeout.ms``, librdkafka's default 45 s); its transactional id, the
same, aborts the transaction the dead one left open. The clock starts when the new process is
started and stops when the group's committed offsets reach the end of the input, so it counts
start-up (model load), the group join, the changelog restore and the remaining 70 % of the
replay. ``restart_to_ready_s`` is the part until ``/readyz`` answers (joined and restored).

``--dynamic`` runs the same without static membership, for comparison (the restarted member
then waits for the dead one's session to expire).

Run alone (starts its own broker and trains its own small model)::

    python -m bench.restart --events 300000 --json
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.common import (
    PARTITIONS,
    ROOT,
    broker_and_workdir,
    create_topics,
    end_offsets,
    free_port,
    scorer_command,
    standalone_parser,
    stop_process,
    train_small_model,
    wait_ready,
    watch_group_until_done,
)
from bench.latency import encoded_events, make_book
from schemas.client_config import PARTITIONER

DEFAULT_EVENTS = 300_000
KILL_AT = 0.30


@dataclass
class RestartResult:
    events: int  # in the input topic
    killed_at_events: int  # committed when the first process was killed
    restart_to_ready_s: float  # restart -> /readyz 200 (group joined, state restored)
    restart_to_drained_s: float  # restart -> committed offsets at the end of the input
    static_membership: bool


def produce_all(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "partitioner": PARTITIONER}
    )
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise RuntimeError("could not deliver the input within 120 s")


def committed(watcher: Consumer, topic: str) -> int:
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    return sum(max(tp.offset, 0) for tp in watcher.committed(tps, timeout=10))


def measure_restart(
    bootstrap: str,
    model: Path,
    work: Path,
    events: int = DEFAULT_EVENTS,
    static: bool = True,
    kill_at: float = KILL_AT,
) -> RestartResult:
    topic = f"bench.restart.{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [topic], PARTITIONS)
    records = encoded_events(make_book(work, events, seed=23), events)
    produce_all(bootstrap, topic, records)
    ends = end_offsets(bootstrap, topic)
    total = sum(ends.values())
    group = f"bench-restart-{uuid.uuid4().hex[:6]}"
    port = free_port()
    command = scorer_command(bootstrap, model, topic, group, "exactly-once", port)
    if not static:
        command.append("--dynamic-membership")

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    first = start()
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        while (done := committed(watcher, topic)) < kill_at * total:
            if first.poll() is not None:
                raise RuntimeError(f"scorer exited with {first.returncode} before the kill")
            time.sleep(0.05)
        first.kill()  # SIGKILL: no revoke, no commit, no leave-group
        first.wait(10)
    finally:
        watcher.close()
        stop_process(first)
    restarted_at = time.perf_counter()
    second = start()
    try:
        ready_s = wait_ready(port, second, timeout_s=300)
        progress = watch_group_until_done(bootstrap, group, topic, ends, timeout_s=900)
    finally:
        stop_process(second)
    return RestartResult(
        events=total,
        killed_at_events=done,
        restart_to_ready_s=ready_s,
        restart_to_drained_s=progress.done_at - restarted_at,
        static_membership=static,
    )


def main() -> None:
    parser = standalone_parser(__doc__)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--dynamic", action="store_true", help="without static membership")
    args = parser.parse_args()
    with broker_and_workdir(args.bootstrap_servers) as (bootstrap, work):
        model = train_small_model(work)
        result = measure_restart(bootstrap, model, work, args.events, static=not args.dynamic)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        for key, value in asdict(result).items():
            print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
