"""`make bench`: every figure of the scorer, side by side on one broker, in one run.

1. Throughput: the transactional passthrough ceiling, the scorer in exactly-once and
   at-least-once modes (all three on the same pre-produced input, timed the same way from the
   group's committed offsets), and the naive per-event ``predict_proba`` loop.
2. Latency (``bench.latency``): produce -> committed ``StrategyChanged`` visible, p50/p95/p99,
   at half the exactly-once throughput just measured; then both again with the learned policy
   and champion/challenger arms (:func:`strategy_part`).
3. State (``bench.state``): bytes per loan with a million loans held; changelog restore rate.
4. Quality (``bench.uci_quality``): the stream's AUC on UCI held-out clients and its largest
   difference from the same bundle scoring offline.
5. Point in time (``bench.point_in_time``): UCI AUC / HIGH tier / calibration after each of
   the six statements, and a synthetic holdout's calibration by months on book and lead
   time against "flag at 30+ days past due".
6. Restart (``bench.restart``): ``kill -9`` at 30 % of a 300k-event replay, an immediate
   restart with the same instance id, seconds until the group has committed the end.

Writes ``docs/benchmarks.json`` and ``docs/BENCHMARKS.md``; ``--json`` prints the figures. Both
name the Python version and, per compiled kernel, whether the scorer ran it or its Python
reference (``details.runtime``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from bench.common import (
    PARTITIONS,
    ROOT,
    benchmark_broker,
    cli,
    create_topics,
    end_offsets,
    runtime,
    scorer_command,
    stop_process,
    train_small_model,
    watch_group_until_done,
)


def prepare(work: Path, bootstrap: str, loans: int) -> tuple[Path, str, int]:
    """Train a bundle on one book; pre-produce another, larger book into a 6-partition topic."""
    model = train_small_model(work)
    cli("generate", "--loans", str(loans), "--seed", "11", "--out", str(work / "book"))
    topic = f"bench.events.{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [topic], PARTITIONS)
    cli(
        "produce",
        "--source",
        "events",
        "--input",
        str(work / "book" / "events.jsonl"),
        "--topic",
        topic,
        "--bootstrap-servers",
        bootstrap,
        "--no-progress",
    )
    return model, topic, sum(end_offsets(bootstrap, topic).values())


def measure(
    command: list[str], bootstrap: str, group: str, topic: str, instances: int = 1
) -> float:
    """Events/s of ``command`` (``instances`` copies in one group) over the whole input."""
    processes = [
        subprocess.Popen(
            _instance(command, i) if instances > 1 else command,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(instances)
    ]
    try:
        progress = watch_group_until_done(bootstrap, group, topic, end_offsets(bootstrap, topic))
    finally:
        for process in processes:
            stop_process(process)
    return progress.events_per_s


def _instance(command: list[str], i: int) -> list[str]:
    """``command`` with its ``--instance-id`` made unique (its own transactional id)."""
    at = command.index("--instance-id") + 1
    return [*command[:at], f"{command[at]}-{i}", *command[at + 1 :]]


def naive_eps(bootstrap: str, model_dir: Path, topic: str, events: int = 2000) -> float:
    """The notebook approach: decode, update state, the fitted scikit-learn model's
    ``predict_proba`` on one row, per event (the scorer's own serving path is not used: it is
    part of what the scorer brings)."""
    from confluent_kafka import Consumer

    from models.features.state import InvalidEvent, LoanState
    from models.serving.bundle import ModelBundle
    from schemas import AvroSerde
    from schemas.events import LOAN_OPENED

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    while len(values) < events:
        values += [m.value() for m in consumer.consume(500, timeout=1.0) if not m.error()]
    consumer.close()
    serde, states = AvroSerde("LoanEvent"), {}
    model = ModelBundle.load(model_dir).model
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
        model.predict_proba([state.features()])
    return events / (time.perf_counter() - started)


def throughput(bootstrap: str, work: Path, loans: int) -> tuple[dict, Path]:
    """Part 1; returns (figures, the model the other parts reuse)."""
    model, topic, total = prepare(work, bootstrap, loans)
    group = f"bench-pt-{uuid.uuid4().hex[:6]}"
    passthrough = measure(
        [
            sys.executable,
            "-m",
            "bench.passthrough",
            "--bootstrap-servers",
            bootstrap,
            "--topic",
            topic,
            "--events",
            str(total),
            "--group-id",
            group,
        ],
        bootstrap,
        group,
        topic,
    )
    figures = {"input_events": total, "input_loans": loans, "passthrough_eps": passthrough}
    for key, guarantee in (("scorer_eos_eps", "exactly-once"), ("scorer_alo_eps", "at-least-once")):
        group = f"bench-{guarantee}-{uuid.uuid4().hex[:6]}"
        command = scorer_command(bootstrap, model, topic, group, guarantee)
        figures[key] = measure(command, bootstrap, group, topic)
    # Not a target: what scaling out by partitions buys on this machine (the broker shares it).
    group = f"bench-eos2-{uuid.uuid4().hex[:6]}"
    figures["scorer_eos_2_instances_eps"] = measure(
        scorer_command(bootstrap, model, topic, group, "exactly-once"),
        bootstrap,
        group,
        topic,
        instances=2,
    )
    figures["naive_eps"] = naive_eps(bootstrap, model, topic)
    figures["_topic"] = topic  # for the strategy part (popped by run)
    return figures, model


def strategy_options(work: Path) -> list[str]:
    """``serve`` options for the learned policy and arms (issue #14): the default policy file
    (guardrails on, as in every other part) plus ``bench.processor``'s experiment -- the table
    as champion for 80 % of loans, the learned policy with epsilon 0.1 as challenger for 20 % --
    and a treatment bundle trained as ``bench.processor`` trains it (10,000 simulated loans)."""
    from bench.processor import EXPERIMENT, train_treatment_model
    from models.serving.policy import DEFAULT_POLICY

    policy = work / "policy-arms.yaml"
    policy.write_text(DEFAULT_POLICY.read_text() + EXPERIMENT)
    treatment = train_treatment_model(work / "strategy")
    return ["--policy", str(policy), "--strategy-model", str(treatment)]


def strategy_part(bootstrap: str, work: Path, model: Path, topic: str, eos_eps: float) -> dict:
    """Part 2b: exactly-once throughput on part 1's input and latency at half of it, with the
    champion/challenger experiment and the learned policy (:func:`strategy_options`)."""
    from bench.latency import measure_latency

    extra = strategy_options(work)
    group = f"bench-arms-{uuid.uuid4().hex[:6]}"
    command = scorer_command(bootstrap, model, topic, group, "exactly-once", extra=extra)
    eps = measure(command, bootstrap, group, topic)
    latency = asdict(measure_latency(bootstrap, model, eps / 2, work, extra=extra))
    return {"scorer_eos_arms_eps": eps, "latency": latency, "table_eos_eps": eos_eps}


class Timer:
    """Seconds of each part, and the machine's load average when it ended."""

    def __init__(self, seconds: dict[str, float], load: dict[str, float]) -> None:
        self.seconds, self.load, self.started = seconds, load, time.monotonic()

    def done(self, part: str) -> None:
        now = time.monotonic()
        self.seconds[part], self.started = now - self.started, now
        self.load[part] = os.getloadavg()[0]


def generator_seconds(loans: int) -> float:
    """Wall-clock seconds for ``generate_book(loans)``: the synthetic book every test and the
    demo build on (the target keeps `make demo` and the suite quick)."""
    from models.data.synthetic import generate_book

    started = time.perf_counter()
    generate_book(loans, seed=0)
    return time.perf_counter() - started


def run(loans: int) -> dict:
    """All four parts on one broker; figures at the top level, the rest under ``details``."""
    from bench.latency import measure_latency
    from bench.point_in_time import measure as measure_point_in_time
    from bench.restart import measure_restart
    from bench.state import measure_state
    from bench.uci_quality import measure_uci

    seconds: dict[str, float] = {}
    load: dict[str, float] = {}  # 1-minute load average after each part (a shared machine)
    details: dict[str, dict] = {"seconds": seconds, "load_average": load}
    with benchmark_broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        parts = Timer(seconds, load)
        figures, model = throughput(bootstrap, work, loans)
        parts.done("throughput")
        details["runtime"] = runtime(model)
        latency = asdict(measure_latency(bootstrap, model, figures["scorer_eos_eps"] / 2, work))
        parts.done("latency")
        topic = figures.pop("_topic")
        arms = strategy_part(bootstrap, work, model, topic, figures["scorer_eos_eps"])
        parts.done("arms")
        state = asdict(measure_state(bootstrap, model)[0])
        parts.done("state")
        uci = asdict(measure_uci(bootstrap, work))
        parts.done("uci_quality")
        point_in_time = measure_point_in_time(work=work / "point-in-time")
        figures["synthetic_100k_seconds"] = generator_seconds(100_000)
        parts.done("point_in_time")
        restart = asdict(measure_restart(bootstrap, model, work))
        parts.done("restart")
    for key in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms"):
        figures[key] = latency.pop(key)
    figures["scorer_eos_arms_eps"] = arms["scorer_eos_arms_eps"]
    figures["latency_arms_p99_ms"] = arms["latency"]["latency_p99_ms"]
    for key in ("state_bytes_per_loan", "restore_loans_per_s"):
        figures[key] = state.pop(key)
    for key in ("uci_stream_auc", "uci_max_abs_score_diff"):
        figures[key] = uci.pop(key)
    figures["uci_train_seconds"] = uci.pop("train_seconds")
    uci_by_k = (point_in_time["uci"] or {}).get("by_k", [])
    figures["uci_auc_by_month"] = [r["roc_auc"] for r in uci_by_k] or None
    figures["synthetic_max_calibration_gap"] = max(
        (
            abs(b["calibration_gap"])
            for b in point_in_time["synthetic"]["by_months_on_book"]
            if b["snapshots"] >= 500
        ),
        default=None,
    )
    details.update(latency=latency, state=state, uci_quality=uci, point_in_time=point_in_time)
    figures["restart_to_drained_s"] = restart.pop("restart_to_drained_s")
    details.update(latency=latency, state=state, uci_quality=uci, restart=restart, arms=arms)
    figures["details"] = details
    return figures


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "cpu",
    )
    kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return (
        f"{cpu} ({platform.machine()}), {os.cpu_count()} cores, {kb / 2**20:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}"
    )


def versions() -> str:
    import confluent_kafka
    import numpy
    import river
    import sklearn

    pom = (ROOT / "scripts" / "pom.xml").read_text()
    kafka = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    return (
        f"Python {platform.python_version()}, confluent-kafka {confluent_kafka.__version__} "
        f"(librdkafka {confluent_kafka.libversion()[0]}), Apache Kafka broker "
        f"{kafka.group(1) if kafka else '?'} (KRaft, one local broker), scikit-learn "
        f"{sklearn.__version__}, river {river.__version__}, numpy {numpy.__version__}"
    )


def _check(value: float | None, target: float, at_least: bool) -> str:
    if value is None:
        return "not measured"
    return "met" if (value >= target if at_least else value <= target) else "**not met**"


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _by_5s(lat: dict) -> str:
    """The run's p99 per 5 s of input, warm-up included (older result files lack it)."""
    series = lat.get("p99_by_5s_ms") or ()
    start = int(lat["warmup_s"] // 5)
    cells = [f"{v:,.0f}" for v in series]
    if start < len(cells):
        cells[start] = "| " + cells[start]
    return (
        "p99 per 5 s of input, from the first (the bar marks the end of the warm-up): "
        + " ".join(cells)
        + " ms."
    )


def _arms_section(f: dict, arms: dict) -> list[str]:
    lat = arms["latency"]
    return [
        "## With the learned policy and arms",
        "",
        "The same input and the same measurements as above, with `serve --policy FILE "
        "--strategy-model DIR` (`bench.run_all.strategy_options`): the default policy "
        "(guardrails on) plus an experiment, the table as champion for 80 % of loans and the "
        "learned policy (epsilon 0.1) as challenger for 20 %, with a treatment bundle trained "
        "on 10,000 simulated loans.",
        "",
        "| figure | measured | target | |",
        "|---|---:|---:|---|",
        f"| scorer_eos_arms_eps | {f['scorer_eos_arms_eps']:,.0f} ev/s "
        f"({f['scorer_eos_arms_eps'] / f['scorer_eos_eps']:.2f} x the table's) | | |",
        f"| latency_arms_p50_ms (at {lat['rate']:,.0f} ev/s) | {lat['latency_p50_ms']:,.0f} | | |",
        f"| latency_arms_p99_ms | {lat['latency_p99_ms']:,.0f} | ≤ 250 | "
        f"{_check(lat['latency_p99_ms'], 250, False)} |",
        "",
        "p50 over the thirds: "
        + " / ".join(f"{v:,.0f}" for v in lat["p50_by_third_ms"])
        + f" ms; warm-up p50 / p99 {lat['warmup_p50_ms']:,.0f} / {lat['warmup_p99_ms']:,.0f} ms.",
        "",
        _by_5s(lat),
        "",
    ]


def write_docs(figures: dict, command: str) -> str:
    f, d = figures, figures["details"]
    lat, state, uci = d["latency"], d["state"], d["uci_quality"]
    ratios = [
        ("scorer EOS / passthrough", f["scorer_eos_eps"] / f["passthrough_eps"], 0.65),
        ("scorer EOS / scorer ALO", f["scorer_eos_eps"] / f["scorer_alo_eps"], 0.8),
        ("scorer EOS / naive", f["scorer_eos_eps"] / f["naive_eps"], 100),
    ]
    arms = d.get("arms")
    if arms:
        ratios.append(
            (
                "scorer EOS with arms / passthrough",
                f["scorer_eos_arms_eps"] / f["passthrough_eps"],
                0.65,
            )
        )
    targets = [  # (figure, value, format, target text, target, at least?)
        ("state_bytes_per_loan", f["state_bytes_per_loan"], ",.0f", "≤ 600", 600, False),
        ("restore_loans_per_s", f["restore_loans_per_s"], ",.0f", "≥ 100,000", 100_000, True),
        ("uci_stream_auc", f["uci_stream_auc"], ".4f", "≥ 0.78", 0.78, True),
        ("uci_max_abs_score_diff", f["uci_max_abs_score_diff"], ".1e", "≤ 1e-9", 1e-9, False),
        *(
            (
                f"uci_auc_after_{k}_statements",
                f["uci_auc_by_month"][k - 1],
                ".4f",
                f"≥ {t}",
                t,
                True,
            )
            for k, t in ((1, 0.67), (3, 0.70), (6, 0.78))
            if f["uci_auc_by_month"]
        ),
        (
            "synthetic_max_calibration_gap",
            f["synthetic_max_calibration_gap"],
            ".4f",
            "≤ 0.03",
            0.03,
            False,
        ),
        ("restart_to_drained_s", f["restart_to_drained_s"], ".1f", "≤ 20", 20, False),
        ("uci_train_seconds", f.get("uci_train_seconds"), ".1f", "≤ 120", 120, False),
        ("synthetic_100k_seconds", f.get("synthetic_100k_seconds"), ".1f", "≤ 30", 30, False),
    ]
    secs = d["seconds"]
    lines = [
        "# Benchmarks",
        "",
        f"- Machine: {machine()}.",
        f"- Versions: {versions()}.",
        f"- Python {d['runtime']['python']}; kernels: "
        + ", ".join(f"{k} {v}" for k, v in d["runtime"]["kernels"].items())
        + " (`compiled`: the Cython kernel ran; `reference`: its Python twin did).",
        f"- Command: `{command}` (all figures from the same run, on one broker; "
        f"{sum(secs.values()) / 60:.1f} min: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items())
        + ").",
        "- The 2 cores are shared with other work, so figures vary from run to run (latency "
        "most); 1-minute load average (this run included) after each part: "
        + ", ".join(f"{k} {v:.1f}" for k, v in d["load_average"].items())
        + ".",
        "",
        "## Throughput",
        "",
        f"Input: {f['input_events']:,} events of {f['input_loans']:,} loans pre-produced to "
        f"{PARTITIONS} partitions. Passthrough and both scorers are timed from the group's "
        "committed offsets (first commit to the commit reaching the end of the input), so "
        "start-up is excluded alike; naive = decode + state + the fitted scikit-learn model's "
        "`predict_proba` on one row per event, in-process, on the first 2,000 events. The "
        "scorer runs the default policy file (`models/serving/default_policy.yaml`): "
        "guardrails on (holds, time-barred debt, contact frequency, the escalation ladder).",
        "",
        "| figure | events/s |",
        "|---|---:|",
        *(
            f"| {k} | {f[k]:,.0f} |"
            for k in ("passthrough_eps", "scorer_eos_eps", "scorer_alo_eps", "naive_eps")
        ),
        f"| scorer EOS, 2 instances (scale-out, no target) | "
        f"{f['scorer_eos_2_instances_eps']:,.0f} |",
        "",
        "| ratio | measured | target | |",
        "|---|---:|---:|---|",
        *(
            f"| {name} | {value:.2f} | ≥ {target:g} | {_check(value, target, True)} |"
            for name, value, target in ratios
        ),
        "",
        "## Latency",
        "",
        f"{lat['events']:,} events of a fresh synthetic book, Avro-encoded beforehand, "
        f"produced at a steady {lat['rate']:,.0f} events/s (half of scorer_eos_eps; achieved "
        f"{lat['produced_eps']:,.0f}) in 1 ms slices, to a fresh topic consumed by "
        "`loan-recovery serve --guarantee exactly-once` (defaults: a commit every 50 ms, "
        "its calls in the background while the next batches are scored, counted from one "
        "commit's start to the next once caught up; a trickle of input "
        "gathered into batches of up to 500 events for at most 25 ms, never past a due "
        "commit), started and "
        "ready (`/readyz`) before the first event. The first "
        f"{lat['warmup_s']:.0f} s of input are warm-up, left out of the percentiles (a fresh "
        "process's first seconds, and the broker's after the throughput part: see "
        "`bench.latency`, 'Why 40 s'); their own p50 / p99 / max "
        f"were {lat['warmup_p50_ms']:,.0f} / {lat['warmup_p99_ms']:,.0f} / "
        f"{lat['warmup_max_ms']:,.0f} ms. Latency of each of the "
        f"{lat['changes']:,} measured `StrategyChanged` records = the wall-clock time a "
        "`read_committed` "
        "consumer of the strategy topic received it minus the Kafka CreateTime of its source "
        "event (`source_partition`/`source_offset`). The load generator, the reader, the "
        "broker and the scorer share the 2 cores.",
        "",
        "| figure | ms | target | |",
        "|---|---:|---:|---|",
        f"| latency_p50_ms | {f['latency_p50_ms']:,.0f} | | |",
        f"| latency_p95_ms | {f['latency_p95_ms']:,.0f} | | |",
        f"| latency_p99_ms | {f['latency_p99_ms']:,.0f} | ≤ 250 | "
        f"{_check(f['latency_p99_ms'], 250, False)} |",
        f"| (max) | {lat['latency_max_ms']:,.0f} | | |",
        "",
        "p50 over the first, middle and last third of the run: "
        + " / ".join(f"{v:,.0f}" for v in lat["p50_by_third_ms"])
        + " ms (flat: the scorer kept up with the rate; rising: a backlog built). Split of the "
        f"p50s at the scorer's `decided_at`: produce → decision {lat['p50_to_decision_ms']:,.0f}"
        f" ms, decision → visible to `read_committed` {lat['p50_decision_to_visible_ms']:,.0f} "
        "ms (commit interval, commit, fetch).",
        "",
        _by_5s(lat),
        "",
        *(_arms_section(f, arms) if arms else []),
        "## State, restore and quality",
        "",
        f"- state_bytes_per_loan: `tracemalloc` over {state['loans']:,} loans put into one "
        "`PartitionProcessor`'s `states` dict, each opened from a `LoanOpened` event with one "
        "payment event applied (`LoanState.open`/`apply`) and a decision set (strategy, tier, "
        "score, segment), ids fresh per loan; includes ids, arrays and the dict.",
        f"- restore_loans_per_s: {state['restore_loans']:,} `LoanState` records (plus a "
        f"`__partition__` checkpoint per partition per transaction; {state['restore_records']:,} "
        "records) written with the scorer's transactional producer settings to a compacted "
        "changelog made by `producer.admin.create_topics`, then `ChangelogRestorer.restore` "
        f"into six fresh processors timed start to finish ({state['restore_seconds']:.2f} s). "
        "Restored loans are held in "
        f"{state['restored_bytes_per_loan']:,.0f} bytes each (the same loans decoded by "
        "`PartitionProcessor.restore`, measured like state_bytes_per_loan).",
        "- uci_stream_auc / uci_max_abs_score_diff: a bundle trained on "
        "`UCI_Credit_Card.csv` (`train --source uci`, 30 % holdout, seed 0); the "
        f"{uci['holdout_clients']:,} held-out clients' {uci['events']:,} events produced to a "
        "fresh topic and consumed by `serve --guarantee exactly-once`; each client's last "
        "committed `risk_score` read from the changelog. AUC against the outcome; the "
        "difference against the bundle's `predict_proba` on the client's final feature row "
        "(`models.training.snapshots.snapshot_set`, `final_x`); offline holdout AUC "
        f"{_fmt(uci['uci_offline_auc'], '.4f')}." + (f" {uci['note']}." if uci.get("note") else ""),
        f"- restart_to_drained_s (`bench.restart`): `kill -9` of `serve` once "
        f"{d['restart']['killed_at_events']:,} of {d['restart']['events']:,} pre-produced events "
        "were committed, an immediate restart with the same `--instance-id` (static "
        "membership), seconds from the restart until the group's committed offsets reach the "
        f"end of the input ({d['restart']['restart_to_ready_s']:.1f} s of it until `/readyz`).",
        "- uci_train_seconds: wall clock of that `train --source uci` run (the whole file, "
        "snapshots, calibrated forest, clustering comparison); synthetic_100k_seconds: "
        "`generate_book(100_000, seed=0)` in-process. Both were timed unit tests before; "
        "timings belong here.",
        "",
        "| figure | measured | target | |",
        "|---|---:|---:|---|",
        *(
            f"| {name} | {_fmt(value, spec)} | {text} | {_check(value, target, at_least)} |"
            for name, value, spec, text, target, at_least in targets
        ),
    ]
    from bench.revisions import section

    text = "\n".join([*lines, *section()]) + "\n"
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
