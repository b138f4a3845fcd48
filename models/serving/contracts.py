"""What the scorer's processor needs of the early-warning model, the online segmenter and the
policy: exactly the attributes and methods it calls. ``consumer`` is typed against these, so
another model, segmenter or policy (a learned one, a challenger arm) plugs in by meeting them;
:class:`~models.serving.bundle.ModelBundle`, :class:`~models.serving.segmenter.OnlineSegmenter`
and :class:`~models.serving.policy.Policy` are today's implementations.

The policy owns the tier thresholds (docs/ARCHITECTURE.md §5): it maps a score to a tier *and*
applies hysteresis around the same numbers, so the two can never disagree. The bundle's
``thresholds`` only record what training evaluated the model at.

>>> from models.serving.policy import Policy
>>> isinstance(Policy.load(None), StrategyPolicy)
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from models.features.state import LoanState
from models.serving.contributions import Explanation, TopContributions
from models.serving.guardrails import Guardrails


@runtime_checkable
class EarlyWarningModel(Protocol):
    """Calibrated P(default) per row of ``LoanState.features()``; each row's score depends on
    that row only."""

    version: str

    def predict_proba(self, rows: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class ExplainingModel(Protocol):
    """A model whose scores decompose onto its inputs (bias + contributions = score,
    ``models.serving.contributions``): the processor gives emitted records reasons from it.
    A model without ``explain`` (or returning None) emits records without reasons."""

    def explain(self, rows: np.ndarray) -> Explanation | None: ...

    def explain_top(self, rows: np.ndarray, k: int) -> TopContributions | None: ...


@runtime_checkable
class Segmenter(Protocol):
    """One partition's online clusterer (docs/ARCHITECTURE.md §5: one per input partition),
    checkpointed as plain JSON."""

    def learn_predict(self, x: np.ndarray) -> str: ...

    def to_json(self) -> str: ...


@runtime_checkable
class StrategyPolicy(Protocol):
    """Score -> tier, and tier x segment -> strategy with hysteresis around the same
    thresholds."""

    version: str
    guardrails: Guardrails | None  # None: the processor uses the documented defaults

    def tier(self, score: float) -> str: ...

    def decide(
        self, tier: str, segment: str, score: float, current_strategy: str | None
    ) -> str: ...

    def rule(self, tier: str, segment: str, score: float, current_strategy: str | None) -> str:
        """The rule :meth:`decide` used (same arguments), e.g. ``table: HIGH x HIGH_RISK``;
        asked only for emitted decisions."""
        ...


class ExperimentFields(NamedTuple):
    """StrategyChanged v2's experiment fields of one emitted decision."""

    experiment_id: str | None
    arm: str
    propensity: float
    expected_net_recovery: float | None


@runtime_checkable
class DecisionPlan(Protocol):
    """One batch's decisions of a :class:`PlanningPolicy`, asked per event in offset order
    (row ``i`` of the batch); ``models.strategy.stream.BatchPlan`` is the implementation."""

    def decide(self, i: int, tier: str, segment: str, score: float, current: str | None) -> str:
        """What the policy wants at row ``i`` (the guardrails come after)."""
        ...

    def rule(self, i: int) -> str: ...

    def settle(self, i: int, emitted: str, guard: Callable[[str], str]) -> None:
        """Row ``i`` emits ``emitted``; ``guard(w)`` is what the guardrails would make of
        ``w`` at that event (for the propensity of what was emitted)."""
        ...

    def fields(self) -> dict[int, ExperimentFields]:
        """The experiment fields of every settled row."""
        ...


@runtime_checkable
class PlanningPolicy(StrategyPolicy, Protocol):
    """A policy that decides from the loan's whole feature row (a learned policy, experiment
    arms): the processor asks it for one :class:`DecisionPlan` per batch, so a model behind it
    is evaluated once per batch, not per event."""

    def plan(
        self,
        rows: np.ndarray,
        scores: Sequence[float],
        states: Sequence[LoanState],
        reported_income: np.ndarray | None = None,
    ) -> DecisionPlan:
        """``reported_income[i]``: the loan's latest reported income right after event ``i``
        (NaN: none; LoanEvent v4), as of the event like ``rows`` -- ``states`` already hold
        the batch's later events."""
        ...
