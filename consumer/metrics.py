"""The scorer's Prometheus metrics; names and labels are the contract in docs/INTERNALS.md
(the Grafana dashboard and the alert rules query exactly these).

Each :class:`ScorerMetrics` owns its registry, so several scorers (tests) can live in one
process. The hot path updates them once per batch, never per message.

Example::

    >>> m = ScorerMetrics()
    >>> m.events.labels(event_type="PaymentMissed", outcome="scored").inc(3)
    >>> b"loanrec_events_total" in m.exposition()
    True
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from consumer.processor import BatchResult
from prometheus_client.utils import floatToGoString

SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Event time -> decision: a replay of history is months behind, a live stream sub-second.
LATENCY_BUCKETS = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    3600.0,
    86400.0,
    2_592_000.0,
    31_536_000.0,
)
BATCH_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000)
SEGMENTS = ("HIGH_RISK", "OTHERS", "LOW_RISK")
TIERS = ("HIGH", "MODERATE", "LOW")
# Every status GET /loans answers (consumer.lookup, consumer.health): 401 without the token,
# 421 another instance owns the loan, 503 not started or the partition restoring or moving.
LOOKUP_STATUSES = ("200", "400", "401", "404", "421", "500", "503")
GUARDRAIL_RULES = ("compliance_hold", "escalation_ladder", "time_barred", "legal_min_days_past_due")


class BatchHistogram(Collector):
    """A Prometheus histogram fed a whole batch of observations at once.

    ``prometheus_client.Histogram.observe`` costs a few microseconds -- a lock and a bucket
    search in Python -- which per scored event was a tenth of the scorer's time. This one
    bins a batch with numpy and exposes exactly what a ``Histogram`` with the same buckets fed
    the same values one by one would (same series, ``le`` labels and counts).

    >>> registry = CollectorRegistry()
    >>> h = BatchHistogram("demo_seconds", "Demo.", (0.1, 1.0), registry)
    >>> h.observe_many(np.array([0.05, 0.1, 3.0]))
    >>> b'demo_seconds_bucket{le="0.1"} 2.0' in generate_latest(registry)
    True
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = np.array(sorted(buckets), dtype=np.float64)
        self._labels = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        self._counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()  # the HTTP thread collects while the loop observes
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Observe every value (``value <= le`` counts in bucket ``le``, as Prometheus says)."""
        if not len(values):
            return
        binned = np.bincount(
            np.searchsorted(self._bounds, values, side="left"), minlength=len(self._counts)
        )
        total = float(values.sum())
        with self._lock:
            self._counts += binned
            self._sum += total

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        yield HistogramMetricFamily(
            self.name,
            self.documentation,
            sum_value=total,
            buckets=[(le, float(n)) for le, n in zip(self._labels, cumulative, strict=True)],
        )

    def describe(self) -> Iterator[Metric]:
        return self.collect()


class ScorerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No `_created` series: nothing on the dashboard uses them and they double the
        # exposition (process-wide switch; the scorer is the only exporter in its process).
        disable_created_metrics()
        r = self.registry = registry or CollectorRegistry()
        self.events = Counter(
            "loanrec_events",
            "Input events by body type and outcome.",
            ["event_type", "outcome"],
            registry=r,
        )
        self.batch_size = Histogram(
            "loanrec_batch_size", "Events per processed batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.processing = Histogram(
            "loanrec_processing_seconds",
            "Wall time from poll to outputs handed to the producer, per batch.",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.event_latency = BatchHistogram(  # one observation per event: batched
            "loanrec_event_latency_seconds",
            "Event time (occurred_at) to decision time.",
            LATENCY_BUCKETS,
            r,
        )
        self.strategy_changes = Counter(
            "loanrec_strategy_changes",
            "StrategyChanged events emitted, by transition.",
            ["from_strategy", "to_strategy"],
            registry=r,
        )
        self.alerts = Counter(
            "loanrec_alerts", "EarlyWarningAlert events emitted.", ["tier"], registry=r
        )
        self.dlq = Counter(
            "loanrec_dlq",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.guardrail_interventions = Counter(
            "loanrec_guardrail_interventions",
            "Decisions (one per applied event) a guardrail changed, by rule.",
            ["rule"],
            registry=r,
        )
        self.recovered_after_write_off = Counter(
            "loanrec_recovered_after_write_off",
            "Money (the book's currency) paid after LoanClosed(WRITTEN_OFF), counted when its "
            "transaction commits.",
            registry=r,
        )
        self.lookup_requests = Counter(
            "loanrec_lookup_requests",
            "GET /loans/{loan_id} requests, by HTTP status code.",
            ["status"],
            registry=r,
        )
        self.loans_in_state = Gauge(
            "loanrec_loans_in_state", "Loans held in memory (assigned partitions).", registry=r
        )
        self.loans_by_segment = Gauge(
            "loanrec_loans_by_segment", "Loans per current segment.", ["segment"], registry=r
        )
        self.loans_by_tier = Gauge(
            "loanrec_loans_by_tier", "Loans per current risk tier.", ["tier"], registry=r
        )
        self.consumer_lag = Gauge(
            "loanrec_consumer_lag",
            "Messages behind the high watermark, per input partition.",
            ["partition"],
            registry=r,
        )
        self.transactions = Counter(
            "loanrec_transactions", "Transactions by result.", ["result"], registry=r
        )
        self.commit_seconds = Histogram(
            "loanrec_commit_seconds",
            "Wall time of a committed unit's commit, per unit: the changelog records handed "
            "to the producer, then the offsets and the transaction's end (exactly once) or "
            "the flushes and the offset commit (at least once). A decision becomes visible "
            "only when its unit's commit returns.",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.producer_replacements = Counter(
            "loanrec_producer_replacements",
            "Transactional producers replaced by a new one with the same transactional.id "
            "(failed_abort: an abort librdkafka refused; stuck_call: a commit call blocked "
            "well past transaction.timeout.ms).",
            ["reason"],
            registry=r,
        )
        self.restored_loans = Counter(
            "loanrec_restored_loans", "Loan states restored from the changelog.", registry=r
        )
        self.restored_ahead = Counter(
            "loanrec_restored_ahead_partitions",
            "Partitions restored with state ahead of the group's committed offset (at least "
            "once: a crash between the changelog's flush and the offset commit).",
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "loanrec_assigned_partitions", "Input partitions assigned to this instance.", registry=r
        )
        self.model_info = Gauge(
            "loanrec_model_info", "The loaded model bundle (value 1).", ["version"], registry=r
        )
        self.policy_info = Gauge(
            "loanrec_policy_info", "The loaded strategy policy (value 1).", ["version"], registry=r
        )
        self.up = Gauge("loanrec_up", "1 while the processing loop runs.", registry=r)
        # Read on each scrape (the checkpoint sets its function): it grows while the loop waits
        # out a broker outage inside a commit, when nothing else would update it.
        self.stalled = Gauge(
            "loanrec_stalled_seconds",
            "Seconds stalled by a broker outage (no commit succeeds since); 0 if not.",
            registry=r,
        )
        self._prime()

    def _prime(self) -> None:
        """Create the label sets the dashboard always shows, so they read 0, not absent."""
        for result in ("commit", "abort"):
            self.transactions.labels(result=result)
        for reason in ("failed_abort", "stuck_call"):
            self.producer_replacements.labels(reason=reason)
        for segment in SEGMENTS:
            self.loans_by_segment.labels(segment=segment).set(0)
        for tier in TIERS:
            self.loans_by_tier.labels(tier=tier).set(0)
        self.alerts.labels(tier="HIGH")
        for rule in GUARDRAIL_RULES:
            self.guardrail_interventions.labels(rule=rule)
        for status in LOOKUP_STATUSES:
            self.lookup_requests.labels(status=status)

    def set_model(self, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)

    def set_policy(self, version: str) -> None:
        self.policy_info.clear()
        self.policy_info.labels(version=version).set(1)

    def set_lag(self, lag_by_partition: dict[int, int]) -> None:
        self.consumer_lag.clear()
        for partition, lag in lag_by_partition.items():
            self.consumer_lag.labels(partition=str(partition)).set(lag)

    def set_population(
        self, loans: int, by_segment: dict[str, int], by_tier: dict[str, int]
    ) -> None:
        self.loans_in_state.set(loans)
        for segment in {*SEGMENTS, *by_segment}:
            self.loans_by_segment.labels(segment=segment).set(by_segment.get(segment, 0))
        for tier in {*TIERS, *by_tier}:
            self.loans_by_tier.labels(tier=tier).set(by_tier.get(tier, 0))

    def record_batch(self, result: BatchResult, now_ms: int) -> None:
        """What one partition's batch did: outcomes, outputs, and event-time latency (one
        vectorised observation per batch: no per-message work)."""
        for (event_type, outcome), n in result.outcomes.items():
            self.events.labels(event_type=event_type, outcome=outcome).inc(n)
        for change in result.changes:
            self.strategy_changes.labels(
                from_strategy=change.previous_strategy or "NONE", to_strategy=change.new_strategy
            ).inc()
        if result.alerts:
            self.alerts.labels(tier="HIGH").inc(len(result.alerts))
        for rule, n in result.interventions.items():
            self.guardrail_interventions.labels(rule=rule).inc(n)
        for dead in result.dead_letters:
            self.dlq.labels(reason=dead.reason).inc()
        if result.n:
            lag_ms = now_ms - result.occurred_at.astype(np.float64)
            self.event_latency.observe_many(np.maximum(lag_ms, 0.0) / 1000)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
