"""The report's guardrail section: what the guardrails changed over a history, by rule.

:func:`guardrail_summary` replays the history the report scores through the scorer's batch
reference (``consumer.reference.score_events``: the stream's own processor, so every policy
choice passes through ``models.serving.guardrails`` exactly as in `serve`) and counts

- per rule, every decision it changed -- one per applied event, emitted or not, the same count
  as ``loanrec_guardrail_interventions_total{rule}``;
- per (rule, what the policy wanted, what was sent), the emitted ``StrategyChanged`` records
  the rule shaped (a loan already on ``HOLD`` emits nothing at its next events, so this is at
  most the first count).

Decisions depend on each partition's event sequence (the online segmenter), so the replay uses
the default partition count of the input topic, as `loan-recovery score` does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from models.serving.contracts import EarlyWarningModel, StrategyPolicy
from schemas.topics import DEFAULT_PARTITIONS


@dataclass(frozen=True)
class GuardrailSummary:
    events: int  # records replayed
    changes: int  # emitted StrategyChanged records
    decisions_by_rule: dict[str, int]  # rule -> decisions it changed
    emitted: dict[tuple[str, str, str], int]  # (rule, wanted, sent) -> emitted changes


def guardrail_summary(
    events: Iterable[dict[str, Any]],
    bundle: EarlyWarningModel,
    policy: StrategyPolicy,
    partitions: int = DEFAULT_PARTITIONS,
) -> GuardrailSummary:
    """The module docstring's counts for ``events`` (in the order the producer sends them)."""
    from consumer.reference import score_events

    result = score_events(events, bundle, policy, partitions)
    emitted: Counter[tuple[str, str, str]] = Counter(
        (g.rule, g.wanted_strategy, c.new_strategy) for c in result.changes for g in c.guardrails
    )
    return GuardrailSummary(
        events=result.events,
        changes=len(result.changes),
        decisions_by_rule=dict(sorted(result.interventions.items())),
        emitted=dict(sorted(emitted.items())),
    )
