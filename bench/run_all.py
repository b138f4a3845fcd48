"""`make bench`: scorer throughput against its baselines, side by side on one broker, one run.

Measured now: the transactional passthrough ceiling, the scorer in exactly-once and
at-least-once modes (all three on the same pre-produced input, timed the same way from the
group's committed offsets), and the naive per-event ``predict_proba`` loop. Not yet measured
(reported as null): latency percentiles, state bytes per loan, restore rate, UCI streaming AUC.

Writes ``docs/benchmarks.json`` and ``docs/BENCHMARKS.md``; ``--json`` prints the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import benchmark_broker, end_offsets, watch_group_until_done

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "loan_recovery.cli"]
PARTITIONS = 6


def cli(*args: str) -> None:
    subprocess.run([*CLI, *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def prepare(work: Path, bootstrap: str, loans: int) -> tuple[Path, str, int]:
    """Train a bundle on one book; pre-produce another, larger book into a 6-partition topic."""
    from bench.common import create_topics

    cli("generate", "--loans", "3000", "--seed", "3", "--out", str(work / "train-book"))
    cli("train", "--source", "seed", "--input", str(work / "train-book" / "loans.csv"),
        "--out", str(work / "model"))  # fmt: skip
    cli("generate", "--loans", str(loans), "--seed", "11", "--out", str(work / "book"))
    topic = f"bench.events.{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [topic], PARTITIONS)
    cli("produce", "--source", "events", "--input", str(work / "book" / "events.jsonl"),
        "--topic", topic, "--bootstrap-servers", bootstrap, "--no-progress")  # fmt: skip
    return work / "model", topic, sum(end_offsets(bootstrap, topic).values())


def measure(command: list[str], bootstrap: str, group: str, topic: str) -> float:
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        progress = watch_group_until_done(bootstrap, group, topic, end_offsets(bootstrap, topic))
    finally:
        process.terminate()
        process.wait(60)
    return progress.events_per_s


def scorer_command(bootstrap: str, model: Path, topic: str, group: str, guarantee: str) -> list:
    from producer.admin import create_topics
    from schemas.topics import Topics

    app_id = f"{group}-app"
    topics = Topics(events=topic, strategy_changes=f"{group}.changes",
                    risk_alerts=f"{group}.alerts", dlq=f"{group}.dlq", app_id=app_id)  # fmt: skip
    create_topics(bootstrap, topics, PARTITIONS)
    return [*CLI, "serve", "--model", str(model), "--bootstrap-servers", bootstrap,
            "--app-id", app_id, "--group-id", group, "--instance-id", group,
            "--input-topic", topic, "--strategy-topic", topics.strategy_changes,
            "--alerts-topic", topics.risk_alerts, "--dlq-topic", topics.dlq,
            "--guarantee", guarantee, "--metrics-port", "0"]  # fmt: skip


def naive_eps(bootstrap: str, model: Path, topic: str, events: int = 2000) -> float:
    """The notebook approach: decode, update state, ``predict_proba`` on one row, per event."""
    from confluent_kafka import Consumer

    from models.bundle import ModelBundle
    from models.state import InvalidEvent, LoanState
    from schemas import AvroSerde
    from schemas.events import LOAN_OPENED

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest"})  # fmt: skip
    consumer.subscribe([topic])
    values: list[bytes] = []
    while len(values) < events:
        values += [m.value() for m in consumer.consume(500, timeout=1.0) if not m.error()]
    consumer.close()
    bundle, serde, states = ModelBundle.load(model), AvroSerde("LoanEvent"), {}
    started = time.perf_counter()
    for value in values[:events]:
        event = serde.decode(value)
        state = states.get(event["loan_id"])
        try:
            if event["body"][0] == LOAN_OPENED:
                state = states[event["loan_id"]] = LoanState.open(event)
            elif state is None:
                continue
            else:
                state.apply(event)
        except InvalidEvent:
            continue
        bundle.predict_proba([state.features()])
    return events / (time.perf_counter() - started)


def run(loans: int) -> dict:
    with benchmark_broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        model, topic, total = prepare(Path(tmp), bootstrap, loans)
        group = f"bench-pt-{uuid.uuid4().hex[:6]}"
        passthrough = measure([sys.executable, "-m", "bench.passthrough", "--bootstrap-servers",
                               bootstrap, "--topic", topic, "--events", str(total),
                               "--group-id", group], bootstrap, group, topic)  # fmt: skip
        figures = {"input_events": total, "input_loans": loans, "passthrough_eps": passthrough}
        for key, guarantee in (("scorer_eos_eps", "exactly-once"),
                               ("scorer_alo_eps", "at-least-once")):  # fmt: skip
            group = f"bench-{guarantee}-{uuid.uuid4().hex[:6]}"
            command = scorer_command(bootstrap, model, topic, group, guarantee)
            figures[key] = measure(command, bootstrap, group, topic)
        figures["naive_eps"] = naive_eps(bootstrap, model, topic)
    for key in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "state_bytes_per_loan",
                "restore_loans_per_s", "uci_stream_auc", "uci_max_abs_score_diff"):
        figures[key] = None  # not measured yet
    return figures


def write_docs(figures: dict, command: str) -> str:
    f = figures
    ratios = [
        ("scorer EOS / passthrough", f["scorer_eos_eps"] / f["passthrough_eps"], "≥ 0.5"),
        ("scorer EOS / scorer ALO", f["scorer_eos_eps"] / f["scorer_alo_eps"], "≥ 0.8"),
        ("scorer EOS / naive", f["scorer_eos_eps"] / f["naive_eps"], "≥ 100"),
    ]
    lines = [
        "# Benchmarks", "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, 2 cores; "
        f"Python {platform.python_version()}. Command: `{command}`. "
        f"Input: {f['input_events']:,} events of {f['input_loans']:,} loans, "
        f"{PARTITIONS} partitions, one local Kafka broker, all figures from the same run.", "",
        "| figure | events/s |", "|---|---:|",
        *(f"| {k} | {f[k]:,.0f} |" for k in
          ("passthrough_eps", "scorer_eos_eps", "scorer_alo_eps", "naive_eps")),
        "", "| ratio | measured | target |", "|---|---:|---:|",
        *(f"| {name} | {value:.2f} | {target} |" for name, value, target in ratios),
        "", "Not measured yet: latency percentiles, state bytes per loan, changelog restore "
        "rate, UCI streaming AUC and stream/batch score difference (null in benchmarks.json).",
    ]  # fmt: skip
    text = "\n".join(lines) + "\n"
    (ROOT / "docs" / "BENCHMARKS.md").write_text(text)
    (ROOT / "docs" / "benchmarks.json").write_text(json.dumps(figures, indent=2) + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loans", type=int, default=20_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = run(args.loans)
    text = write_docs(figures, "make bench")
    print(json.dumps(figures, indent=2) if args.json else text)


if __name__ == "__main__":
    main()
