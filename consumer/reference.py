"""`loan-recovery score`: the batch reference for the stream.

It replays a history file through exactly the code the stream runs: events are Avro-encoded
as the producer sends them, split into the per-partition sequences the producer's partitioner
creates (same partition count), and fed to one :class:`PartitionProcessor` per partition. By
the determinism of the processor, the decisions equal those of `loan-recovery serve` on the
same input, whatever its batch sizes, crashes or rebalances.

Example (with a trained bundle)::

    result = score_events(events, bundle, policy, partitions=6)
    result.loans["L00001"].strategy, result.changes[0].new_strategy
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumer.outputs import DeadLetter, EarlyWarningAlert, StrategyChanged
from consumer.partition_store import DAY_MS, DEFAULT_CLOSED_RETENTION_DAYS
from consumer.partitioning import partition_for, split_by_partition
from consumer.processor import PartitionProcessor
from models.features.state import LoanState
from models.serving.contracts import EarlyWarningModel, StrategyPolicy
from schemas import AvroSerde
from schemas.topics import DEFAULT_PARTITIONS, Topics

BATCH = 2000  # like the stream's largest batches; any size gives the same decisions
LOAN_COLUMNS = ("loan_id", "risk_score", "risk_tier", "segment", "strategy")
CHANGE_COLUMNS = (
    "loan_id",
    "source_event_id",
    "source_partition",
    "source_offset",
    "previous_strategy",
    "new_strategy",
    "risk_score",
    "risk_tier",
    "segment",
    "policy_rule",
    "reasons",  # CODE=contribution;... largest first (repr floats: exact round trip)
    "experiment_id",  # the experiment fields (models.strategy.stream); blank without one
    "arm",
    "propensity",
    "expected_net_recovery",
    # What the guardrails did (appended, so readers by position keep working):
    "hold_reason",  # the active holds (comma-separated) when new_strategy is HOLD
    "guardrails",  # rule>wanted_strategy;... in the order the rules applied
    "next_contact_not_before",  # epoch ms; empty for HOLD
)


@dataclass
class ScoreResult:
    loans: dict[str, LoanState] = field(default_factory=dict)
    changes: list[StrategyChanged] = field(default_factory=list)
    alerts: list[EarlyWarningAlert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    events: int = 0
    # guardrail rule -> decisions it changed, emitted or not (the stream's
    # loanrec_guardrail_interventions_total{rule})
    interventions: Counter[str] = field(default_factory=Counter)


def score_events(
    events: Iterable[dict[str, Any]],
    bundle: EarlyWarningModel,
    policy: StrategyPolicy,
    partitions: int = DEFAULT_PARTITIONS,
    topic: str = Topics().events,
    batch: int = BATCH,
    progress: Callable[[int, int], None] | None = None,
    closed_retention_ms: float = DEFAULT_CLOSED_RETENTION_DAYS * DAY_MS,
) -> ScoreResult:
    """Decisions of the stream for ``events`` (in the order the producer would send them).
    ``progress(done, total)`` is called after every batch. Closed loans leave state after
    ``closed_retention_ms`` of event time, by the stream's rule (``PartitionStore.expired``):
    ``loans`` holds what the stream holds after its last commit."""
    encode = AvroSerde("LoanEvent").encode
    result = ScoreResult()
    by_partition = split_by_partition(events, partitions)
    total = sum(len(sequence) for sequence in by_partition.values())
    for partition, sequence in by_partition.items():
        processor = PartitionProcessor(
            bundle, policy, partition, topic, closed_retention_ms=closed_retention_ms
        )
        records = [(offset, e["loan_id"].encode(), encode(e)) for offset, e in enumerate(sequence)]
        result.events += len(records)
        for start in range(0, len(records), batch):
            out = processor.process(records[start : start + batch])
            processor.store.sweep()  # as the stream's commit does (the timing changes no decision)
            processor.store.commit()  # the undo log would otherwise grow with the whole book
            result.changes += out.changes
            result.alerts += out.alerts
            result.dead_letters += out.dead_letters
            result.interventions.update(out.interventions)
            if progress:
                progress(result.events - len(records) + min(start + batch, len(records)), total)
        result.loans.update(processor.store.states)
    return result


def explain_loan(
    events: Iterable[dict[str, Any]],
    bundle: EarlyWarningModel,
    policy: StrategyPolicy,
    loan_id: str,
    partitions: int = DEFAULT_PARTITIONS,
    topic: str = Topics().events,
    batch: int = BATCH,
) -> dict[str, Any] | None:
    """`loan-recovery explain`: the ``GET /loans/{loan_id}`` document of ``loan_id`` after
    ``events``, offline (None: the loan was never opened). Only the loan's partition is
    replayed (its decisions depend on that partition's sequence alone, ARCHITECTURE.md §5), and
    its decision history is complete: every ``StrategyChanged`` and alert the stream emits."""
    from consumer.lookup import loan_document

    partition = partition_for(loan_id, partitions)
    encode = AvroSerde("LoanEvent").encode
    sequence = [e for e in events if partition_for(e["loan_id"], partitions) == partition]
    records = [(offset, e["loan_id"].encode(), encode(e)) for offset, e in enumerate(sequence)]
    processor = PartitionProcessor(bundle, policy, partition, topic)
    changes: list[StrategyChanged] = []
    alerts: list[EarlyWarningAlert] = []
    for start in range(0, len(records), batch):
        out = processor.process(records[start : start + batch])
        changes += (c for c in out.changes if c.loan_id == loan_id)
        alerts += (a for a in out.alerts if a.loan_id == loan_id)
    state = processor.store.states.get(loan_id)
    if state is None:
        return None
    return loan_document(state, partition, changes, view="offline", complete=True, alerts=alerts)


def write_loans_csv(result: ScoreResult, path: Path) -> None:
    """One row per loan; floats in repr precision (round-trip exact)."""
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(LOAN_COLUMNS)
        for loan_id in sorted(result.loans):
            s = result.loans[loan_id]
            writer.writerow([loan_id, repr(s.risk_score), s.risk_tier, s.segment, s.strategy])


def write_changes_csv(result: ScoreResult, path: Path) -> None:
    """Every StrategyChanged the stream emits for this input, in per-partition order."""
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(CHANGE_COLUMNS)
        for c in result.changes:
            writer.writerow(
                [
                    c.loan_id,
                    c.source_event_id,
                    c.source_partition,
                    c.source_offset,
                    c.previous_strategy or "",
                    c.new_strategy,
                    repr(c.risk_score),
                    c.risk_tier,
                    c.segment,
                    c.policy_rule or "",
                    ";".join(f"{r.code}={r.contribution!r}" for r in c.reasons),
                    c.experiment_id or "",
                    c.arm or "",
                    "" if c.propensity is None else repr(c.propensity),
                    "" if c.expected_net_recovery is None else repr(c.expected_net_recovery),
                    c.hold_reason or "",
                    ";".join(f"{g.rule}>{g.wanted_strategy}" for g in c.guardrails),
                    "" if c.next_contact_not_before is None else c.next_contact_not_before,
                ]
            )
