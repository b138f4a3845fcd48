"""The scorer's pure hot path without Kafka: ``PartitionProcessor.process`` over pre-encoded
records, and where its time goes (decode + state, forest, segmenter + policy).

This is what `make bench`'s Kafka figures are made of, so it is where a speed-up is found and
checked first::

    python -m bench.processor --loans 5000 --json
    python -m bench.processor --loans 5000 --profile   # cProfile's top entries
    LOAN_RECOVERY_PURE_PYTHON=1 python -m bench.processor --json   # the reference code only
    python -m bench.processor --strategy --json   # table vs learned vs arms, one run

``--strategy`` runs the same records three times in one process: the table policy, the
learned policy for every loan and the issue's experiment (table champion 80%, learned
challenger 20% with epsilon 0.1), with a treatment bundle trained here (or
``--strategy-model DIR``), and reports each one's events/s and its ratio to the table's.

Throughput is events/s on one core for one partition's sequence, in batches of 2,000 (the
stream's largest batches). The figures name the Python version and, per compiled kernel
(event, forest, segmenter, codec), whether it ran ``compiled`` or its Python ``reference``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import active_kernels, train_small_model

BATCH = 2000


def encoded_records(loans: int, seed: int = 11) -> list[tuple[int, bytes, bytes]]:
    """One synthetic book's events as one partition's (offset, key, Avro value) records."""
    from models.data.synthetic import generate_book
    from schemas import AvroSerde

    encode = AvroSerde("LoanEvent").encode
    _, events, _ = generate_book(loans, seed=seed)
    events.sort(key=lambda e: e["occurred_at"])  # the order a live stream has
    return [(offset, e["loan_id"].encode(), encode(e)) for offset, e in enumerate(events)]


EXPERIMENT = """
experiment:
  id: bench
  arms:
    - {name: champion, policy: table, share: 0.8}
    - {name: challenger, policy: learned, share: 0.2, epsilon: 0.1}
"""


def train_treatment_model(work: Path, loans: int = 10_000) -> Path:
    """A treatment bundle as `train-strategy` fits it (100 trees per strategy, leaves of >= 25)
    on a simulated randomised log of ``loans`` loans (seed 101, as bench.strategy)."""
    import numpy as np

    from models.serving.policy import Policy
    from models.strategy.bundle import write_treatment_bundle
    from models.strategy.decision_log import DecisionLog
    from models.strategy.simulator import Book
    from models.strategy.treatment import TreatmentModel

    book = Book.generate(loans, seed=101, policy=Policy.load(None))
    out = book.run(book.random_choice())
    log = DecisionLog(
        np.array(book.loan_ids),
        book.x,
        out.choice.strategy,
        out.choice.propensity,
        out.net,
        out.recovered,
        out.cost,
        book.horizon,
    )
    write_treatment_bundle(work / "treatment", TreatmentModel().learn(log), {})
    return work / "treatment"


def strategy_policies(work: Path, treatment: Path) -> dict[str, Any]:
    """The three policies ``--strategy`` compares, as `serve` would load them."""
    from models.serving.policy import DEFAULT_POLICY, Policy
    from models.strategy.stream import StreamStrategy

    policy_file = work / "policy-arms.yaml"
    policy_file.write_text(DEFAULT_POLICY.read_text() + EXPERIMENT)
    return {
        "table": Policy.load(),
        "learned": StreamStrategy.load(Policy.load(), None, treatment),
        "arms": StreamStrategy.load(Policy.load(policy_file), policy_file, treatment),
    }


def run_processor(
    model: Path, records: list[tuple[int, bytes, bytes]], policy: Any = None
) -> dict[str, Any]:
    """Events/s of ``process`` and the seconds spent in each of its stages (``policy``: the
    table by default)."""
    from consumer.processor import PartitionProcessor
    from consumer.runtime import tune_gc_for_streaming
    from models.serving.bundle import ModelBundle
    from models.serving.policy import Policy

    bundle, policy = ModelBundle.load(model), policy or Policy.load()
    processor = PartitionProcessor(bundle, policy, partition=0)
    tune_gc_for_streaming()  # as `serve` does
    # wall time, and CPU time (process_time): on a shared machine only the latter compares
    stages = {"apply": 0.0, "predict": 0.0, "decide": 0.0, "commit": 0.0}
    cpu = dict.fromkeys(stages, 0.0)
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, len(records), BATCH):
        t0, c0 = time.perf_counter(), time.process_time()
        result = processor.apply(records[start : start + BATCH])
        t1, c1 = time.perf_counter(), time.process_time()
        scores = bundle.predict_proba(result.rows())
        t2, c2 = time.perf_counter(), time.process_time()
        processor.decide(result, scores)
        t3, c3 = time.perf_counter(), time.process_time()
        processor.store.changelog_records(0)
        processor.store.commit()
        t4, c4 = time.perf_counter(), time.process_time()
        for stage, seconds, cpu_seconds in zip(
            stages,
            (t1 - t0, t2 - t1, t3 - t2, t4 - t3),
            (c1 - c0, c2 - c1, c3 - c2, c4 - c3),
            strict=True,
        ):
            stages[stage] += seconds
            cpu[stage] += cpu_seconds
    elapsed, cpu_elapsed = time.perf_counter() - started, time.process_time() - cpu_started
    per_event_us = {k: round(v / len(records) * 1e6, 2) for k, v in stages.items()}
    return {
        "events": len(records),
        "processor_eps": len(records) / elapsed,
        "per_event_us": per_event_us,
        "processor_cpu_eps": len(records) / cpu_elapsed,
        "per_event_cpu_us": {k: round(v / len(records) * 1e6, 2) for k, v in cpu.items()},
        "python": platform.python_version(),
        "kernels": active_kernels(processor),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loans", type=int, default=5000)
    parser.add_argument("--model", type=Path, help="bundle directory (default: train one)")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top entries")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--strategy", action="store_true", help="table vs learned vs arms, side by side"
    )
    parser.add_argument("--strategy-model", type=Path, help="treatment bundle (default: train)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or train_small_model(Path(tmp))
        records = encoded_records(args.loans)
        if args.strategy:
            treatment = args.strategy_model or train_treatment_model(Path(tmp))
            runs = {
                name: run_processor(model, records, policy)
                for name, policy in strategy_policies(Path(tmp), treatment).items()
            }
            table = runs["table"]["processor_eps"]
            figures = {
                **runs,
                "ratio_to_table": {k: r["processor_eps"] / table for k, r in runs.items()},
                "cpu_ratio_to_table": {
                    k: r["processor_cpu_eps"] / runs["table"]["processor_cpu_eps"]
                    for k, r in runs.items()
                },
            }
        elif args.profile:
            profiler = cProfile.Profile()
            figures = profiler.runcall(run_processor, model, records)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        else:
            figures = run_processor(model, records)
    print(json.dumps(figures, indent=2) if args.json else figures)


if __name__ == "__main__":
    main()
