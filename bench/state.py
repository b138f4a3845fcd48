"""The scorer's state: memory per loan held, and how fast a partition's loans come back.

- ``state_bytes_per_loan``: a million realistic loans in one ``PartitionProcessor``'s
  ``states`` dict, measured with ``tracemalloc`` (every byte Python allocated for them: the
  ``LoanState`` objects, their value arrays, loan and borrower id strings, the stream's decision
  attributes and the dict itself). Each loan is opened from a ``LoanOpened`` event and has one
  payment event applied with the one state machine (``LoanState.open`` / ``apply``, exactly what
  the processor's apply path calls), then carries a decision (strategy, tier, score, segment)
  as after the processor's ``decide``. The events are templates taken from a synthetic book, with
  fresh ids per loan. Target: at most 600 bytes per loan (a million loans in ~600 MB).
- ``restore_loans_per_s``: N loan states written, as the scorer writes them (``LoanState``
  Avro records keyed by loan id to the input's partition, plus a ``__partition__`` checkpoint
  per partition per transaction, with the scorer's own transactional producer settings), to a
  compacted changelog topic created by ``producer.admin.create_topics``; then the scorer's real
  restore path, ``ChangelogRestorer.restore`` into six fresh ``PartitionProcessor`` objects, is
  timed from start to finish. Target: at least 100,000 loans/s (a million loans back in 10 s).
- ``restored_bytes_per_loan`` (a check, no target): the same kind of loans held after a restart,
  i.e. decoded from their changelog records by ``PartitionProcessor.restore``, measured like
  ``state_bytes_per_loan`` -- a restarted scorer must fit where the running one did.

Run alone (starts its own broker and trains its own small model)::

    python -m bench.state --json
    python -m bench.state --loans 200000 --restore-loans 200000 --profile  # restore's top calls
"""

from __future__ import annotations

import cProfile
import gc
import io
import json
import pstats
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    PARTITIONS,
    broker_and_workdir,
    standalone_parser,
    train_small_model,
)

TRANSACTION_RECORDS = 6000  # loan records per changelog transaction (~1,000 per partition)
DECISIONS = (
    ("CALL", "MODERATE", "OTHERS"),
    ("SMS_REMINDER", "LOW", "LOW_RISK"),
    ("LEGAL_NOTICE", "HIGH", "HIGH_RISK"),
)


@dataclass
class StateResult:
    loans: int
    state_bytes_per_loan: float
    build_seconds: float  # opening + applying the loans (under tracemalloc)
    restore_loans: int
    restore_records: int  # loan records + checkpoints in the changelog
    restore_seconds: float
    restore_loans_per_s: float
    # Not a target, a check: the same loans held after a restart, i.e. decoded from changelog
    # records by ``PartitionProcessor.restore`` (no Kafka), measured like state_bytes_per_loan.
    restored_bytes_per_loan: float = 0.0


def event_templates(count: int = 2000, seed: int = 7) -> list[tuple[dict, dict]]:
    """(LoanOpened, first later event) pairs of real synthetic loans."""
    from models.data.synthetic import generate_book
    from schemas.events import LOAN_OPENED

    _, events, _ = generate_book(count, seed=seed)
    first: dict[str, dict] = {}
    pairs: list[tuple[dict, dict]] = []
    for event in events:
        loan = event["loan_id"]
        if event["body"][0] == LOAN_OPENED:
            first[loan] = event
        elif loan in first:
            pairs.append((first.pop(loan), event))
    return pairs


def iter_states(n: int, prefix: str = "M") -> Iterator[Any]:
    """``n`` loans opened + one event applied + a decision, with fresh ids per loan (event ids
    UUID-shaped but counted, not random: uuid4 would double the build time)."""
    from models.features.state import LoanState

    templates = event_templates()
    for i in range(n):
        opened, later = templates[i % len(templates)]
        loan_id, borrower_id = f"L{prefix}-{i:07d}", f"B{prefix}-{i:07d}"
        state = LoanState.open(
            {
                **opened,
                "event_id": f"{i:08x}-0000-4000-8000-{prefix}00000000000",
                "loan_id": loan_id,
                "borrower_id": borrower_id,
            }
        )
        state.apply(
            {
                **later,
                "event_id": f"{i:08x}-0001-4000-8000-{prefix}00000000000",
                "loan_id": loan_id,
                "borrower_id": borrower_id,
            }
        )
        strategy, tier, segment = DECISIONS[i % len(DECISIONS)]
        state.strategy, state.risk_tier, state.segment = strategy, tier, segment
        state.risk_score = (i % 9973) / 9973.0  # a float object per loan, like decide()'s
        yield state


def processor_for(model: Path, partition: int = 0, topic: str = "loan.events") -> Any:
    from consumer.processor import PartitionProcessor
    from models.serving.bundle import ModelBundle
    from models.serving.policy import Policy

    return PartitionProcessor(ModelBundle.load(model), Policy.load(None), partition, topic)


def bytes_per_loan(model: Path, loans: int) -> tuple[float, float]:
    """(bytes per loan, seconds to build) for ``loans`` states in a processor's dict."""
    processor = processor_for(model)
    states = processor.states
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    for state in iter_states(loans):
        states[state.loan_id] = state
    seconds = time.perf_counter() - started
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(states) == loans
    return used / loans, seconds


def restored_bytes_per_loan(model: Path, loans: int) -> float:
    """Bytes per loan of states that came back through ``PartitionProcessor.restore``."""
    from schemas import AvroSerde

    encode = AvroSerde("LoanState").encode
    records = [
        (state.loan_id.encode(), encode(state.to_record()))
        for state in iter_states(loans, prefix="Q")
    ]
    processor = processor_for(model)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for key, value in records:
        processor.restore(key, value)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(processor.states) == loans
    return used / loans


def write_changelog(bootstrap: str, model: Path, loans: int) -> tuple[Any, int]:
    """Create a scorer's topics (changelog compacted) and write ``loans`` states to the
    changelog like the scorer's transactions do; returns (ServeConfig, records written)."""
    from confluent_kafka import Producer

    from consumer.config import ServeConfig
    from consumer.partitioning import partition_for
    from producer.admin import create_topics
    from schemas import AvroSerde
    from schemas.topics import Topics

    app = f"bench-restore-{uuid.uuid4().hex[:6]}"
    topics = Topics(
        events=f"{app}.events",
        strategy_changes=f"{app}.changes",
        risk_alerts=f"{app}.alerts",
        dlq=f"{app}.dlq",
        app_id=app,
    )
    create_topics(bootstrap, topics, PARTITIONS)
    config = ServeConfig(
        bootstrap_servers=bootstrap,
        model_dir=model,
        topics=topics,
        instance_id="writer",
        metrics_port=None,
    )
    processors = {p: processor_for(model, p, topics.events) for p in range(PARTITIONS)}
    producer = Producer(config.producer_config())
    producer.init_transactions(30)
    encode = AvroSerde("LoanState").encode
    written = 0
    producer.begin_transaction()
    for i, state in enumerate(iter_states(loans, prefix="R"), start=1):
        key = state.loan_id.encode()
        _produce(
            producer,
            topics.changelog,
            key,
            encode(state.to_record()),
            partition_for(key, PARTITIONS),
        )
        written += 1
        if i % TRANSACTION_RECORDS == 0 or i == loans:
            now_ms = int(time.time() * 1000)
            for p, processor in processors.items():
                _produce(
                    producer,
                    topics.changelog,
                    b"__partition__",
                    processor.checkpoint_value(now_ms),
                    p,
                )
                written += 1
            producer.commit_transaction(60)
            if i < loans:
                producer.begin_transaction()
    producer.flush(60)
    return config, written


def _produce(producer: Any, topic: str, key: bytes, value: bytes, partition: int) -> None:
    while True:
        try:
            producer.produce(topic, value, key, partition=partition)
            return
        except BufferError:
            producer.poll(0.05)


def time_restore(config: Any, model: Path, profile: bool = False) -> tuple[int, float, str]:
    """(loans restored, seconds, cProfile top entries or "") of ChangelogRestorer.restore into
    fresh processors."""
    from consumer.state_store import ChangelogRestorer

    topics = config.topics
    processors = {p: processor_for(model, p, topics.events) for p in range(PARTITIONS)}
    restorer = ChangelogRestorer(config.restore_consumer_config(), topics.changelog)
    profiler = cProfile.Profile() if profile else None
    try:
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        restored = restorer.restore(processors)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - started
    finally:
        restorer.close()
    held = sum(len(p.states) for p in processors.values())
    if held != restored:
        raise RuntimeError(f"restore reported {restored} loans but the processors hold {held}")
    top = ""
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        top = out.getvalue()
    return restored, seconds, top


def measure_state(
    bootstrap: str,
    model: Path,
    loans: int = 1_000_000,
    restore_loans: int = 200_000,
    profile: bool = False,
) -> tuple[StateResult, str]:
    """Both figures; see the module docstring. Returns (result, profile text or "")."""
    per_loan, build_seconds = bytes_per_loan(model, loans)
    gc.collect()
    config, records = write_changelog(bootstrap, model, restore_loans)
    restored, seconds, top = time_restore(config, model, profile)
    if restored != restore_loans:
        raise RuntimeError(f"restored {restored} of {restore_loans} loans")
    restored_per_loan = restored_bytes_per_loan(model, restore_loans)
    return StateResult(
        loans,
        per_loan,
        build_seconds,
        restored,
        records,
        seconds,
        restored / seconds,
        restored_per_loan,
    ), top


def main() -> None:
    parser = standalone_parser(__doc__)
    parser.add_argument("--loans", type=int, default=1_000_000, help="loans held in memory")
    parser.add_argument("--restore-loans", type=int, default=200_000)
    parser.add_argument("--profile", action="store_true", help="cProfile the restore")
    args = parser.parse_args()
    with broker_and_workdir(args.bootstrap_servers) as (bootstrap, work):
        model = train_small_model(work)
        result, top = measure_state(bootstrap, model, args.loans, args.restore_loans, args.profile)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print(
            f"{result.state_bytes_per_loan:.0f} bytes/loan ({result.loans:,} loans); restore "
            f"{result.restore_loans_per_s:,.0f} loans/s ({result.restore_loans:,} loans in "
            f"{result.restore_seconds:.2f} s)"
        )
    if top:
        print(top)


if __name__ == "__main__":
    main()
