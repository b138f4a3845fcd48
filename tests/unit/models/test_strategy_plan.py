"""The stream's batch plan (``models.strategy.stream.BatchPlan``: the learned choice made in
numpy over the batch) against its per-row reference twin (``RowPlan``, the plain-Python
per-event code it replaced): the same wanted strategies, rules, propensities, arms and
expected values bit for bit, on random batches built to hit ties, masked-out strategies,
hysteresis boundaries, non-finite values, epsilon exploration and every arm type, and in the
real processor, where the guardrails must be asked exactly the same questions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from consumer.processor import PartitionProcessor
from models.features.columns import FEATURE_INDEX, FEATURE_NAMES
from models.features.state import LoanState
from models.serving.contracts import ExperimentFields
from models.serving.policy import DEFAULT_POLICY, TIERS, Policy
from models.strategy.arms import Experiment
from models.strategy.simulator import STRATEGIES
from models.strategy.stream import BatchPlan, RowPlan, StreamStrategy

POLICY = Policy.load(None)
HOLD = POLICY.guardrails.hold if POLICY.guardrails is not None else "HOLD"
ARMS = {
    "id": "plan-test",
    "arms": [
        {"name": "champion", "policy": "table", "share": 0.25},
        {"name": "greedy", "policy": "learned", "share": 0.25},
        {"name": "challenger", "policy": "learned", "share": 0.3, "epsilon": 0.5},
        {"name": "explorer", "policy": "table", "share": 0.2, "epsilon": 0.5},
    ],
}


class TableForests:
    """A stand-in for ``TreatmentForests``: row ``r`` of the batch (its ``outstanding`` is
    ``r``, which is the decision features' balance) is valued ``values[r]``."""

    version = "stub"

    def __init__(self, values: np.ndarray, margin: float) -> None:
        self.values, self.margin = values, margin

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.values[x[:, 0].astype(np.int64)]

    def predict_strategy(self, x: np.ndarray, k: int) -> np.ndarray:
        return self.predict(x)[:, k]


def random_values(rng: np.random.Generator, n: int, margin: float) -> np.ndarray:
    """Small integers (ties, and values exactly ``margin`` below the best), some rows of
    continuous values, and a few non-finite and signed-zero entries."""
    values = rng.integers(0, 5, size=(n, len(STRATEGIES))).astype(np.float64)
    continuous = rng.random(n) < 0.3
    values[continuous] = rng.normal(0, 3 * margin + 1, size=(continuous.sum(), len(STRATEGIES)))
    # exactly at the hysteresis boundary: one strategy margin below the row's maximum
    boundary = rng.random(n) < 0.3
    column = rng.integers(0, len(STRATEGIES), size=n)
    values[boundary, column[boundary]] = values[boundary].max(axis=1) - margin
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e300])
    odd = rng.random(values.shape) < 0.02
    values[odd] = rng.choice(specials, size=odd.sum())
    return values


def random_batch(
    rng: np.random.Generator, n: int
) -> tuple[np.ndarray, list[float], list[LoanState]]:
    rows = np.full((n, len(FEATURE_NAMES)), np.nan)
    rows[:, FEATURE_INDEX["outstanding"]] = np.arange(n)
    missed = rng.integers(0, 6, size=n)
    rows[:, FEATURE_INDEX["num_missed"]] = missed
    rows[:, FEATURE_INDEX["consecutive_missed"]] = rng.integers(0, missed + 1)
    scores = rng.random(n)
    at = rng.random(n)  # scores exactly at (and a hair around) the tier thresholds
    for edge in (POLICY.high, POLICY.moderate):
        scores[at < 0.05] = edge
        scores[(at >= 0.05) & (at < 0.08)] = np.nextafter(edge, 2.0)
        at = rng.random(n)
    loans = [LoanState(f"L{j}", "B") for j in rng.integers(0, n // 3 + 1, size=n)]
    return rows, scores.tolist(), loans


def fields_bits(fields: dict[int, ExperimentFields]) -> dict[int, tuple[object, ...]]:
    """The fields with their floats as hex (bit for bit; NaN equal to NaN) and their types."""
    out: dict[int, tuple[object, ...]] = {}
    for i, f in fields.items():
        expected = f.expected_net_recovery
        out[i] = (
            f.experiment_id,
            f.arm,
            type(f.propensity),
            f.propensity.hex(),
            type(expected),
            None if expected is None else expected.hex(),
        )
    return out


@pytest.mark.parametrize("margin", [0.0, 2.0, 25.0])
@pytest.mark.parametrize("with_arms", [False, True])
def test_the_batch_plan_equals_its_per_row_reference(margin: float, with_arms: bool) -> None:
    experiment = Experiment.from_dict(ARMS, "test") if with_arms else None
    fast_rows = fallback_rows = explored = kept = 0
    kinds: set[str] = set()
    for seed in range(12):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(1, 400))
        rows, scores, loans = random_batch(rng, n)
        forests = TableForests(random_values(rng, n, margin), margin)
        reference = StreamStrategy(POLICY, experiment, forests, reference=True)  # type: ignore[arg-type]
        batch = StreamStrategy(POLICY, experiment, forests)  # type: ignore[arg-type]
        plans = [reference.plan(rows, scores, loans), batch.plan(rows, scores, loans)]
        assert type(plans[0]) is RowPlan and type(plans[1]) is BatchPlan
        # one deterministic guardrail stand-in per batch, logging what it is asked
        outcome = dict(
            zip(STRATEGIES, rng.choice([*STRATEGIES, HOLD], len(STRATEGIES)), strict=True)
        )
        asked: list[list[str]] = [[], []]

        def guard_for(log: list[str], outcome: dict[str, str] = outcome) -> Callable[[str], str]:
            def guard(w: str) -> str:
                log.append(w)
                return str(outcome[w])

            return guard

        for i in range(n):
            tier = POLICY.tier(scores[i])
            if rng.random() < 0.1:  # a tier the batch did not derive: the reference decides
                tier = str(rng.choice(TIERS))
            segment = str(rng.choice(sorted(POLICY.matrix[tier])))
            current = rng.choice([*STRATEGIES, HOLD, "None"])
            current = None if current == "None" else str(current)
            wanted = [p.decide(i, tier, segment, scores[i], current) for p in plans]
            assert wanted[0] == wanted[1], (seed, i)
            if plans[0]._arms[i].policy == "learned":
                vouched = plans[1]._tier[i] == tier  # type: ignore[attr-defined]
                fast_rows += vouched
                fallback_rows += not vouched
            kind = plans[0]._decided[i][0]
            kinds.add(kind)
            explored += kind == "explore"
            kept += kind == "kept"
            assert plans[0]._decided[i] == plans[1]._decided[i]
            if rng.random() < 0.5:  # emitted: its rule and its propensity
                assert plans[0].rule(i) == plans[1].rule(i)
                emitted = str(outcome[wanted[0]]) if wanted[0] in outcome else wanted[0]
                for p, log in zip(plans, asked, strict=True):
                    p.settle(i, emitted, guard_for(log))
        assert asked[0] == asked[1]
        assert fields_bits(plans[0].fields()) == fields_bits(plans[1].fields())
    # both of the batch plan's paths ran, and the cases the test is about occurred
    assert fast_rows > 5 * fallback_rows > 0
    assert kept > 20 and {"best", "kept"} <= kinds
    if with_arms:
        assert explored > 20 and {"table", "explore"} <= kinds


def test_a_nan_value_is_decided_by_the_reference() -> None:
    """``argmax`` takes the first NaN, Python's ``max`` (the reference) keeps the item before
    it: a row with a NaN value is left to the per-row code, which gives the reference's
    answer."""
    values = np.array([[1.0, np.nan, 5.0, 0.0, 0.0, 0.0]])
    forests = TableForests(values, 25.0)
    rows, _, loans = random_batch(np.random.default_rng(0), 1)
    scores = [0.1]  # LOW: AUTOMATED_REMINDER and CALL allowed
    low = np.isin(STRATEGIES, ["AUTOMATED_REMINDER", "CALL"])
    assert int(np.argmax(np.where(low, values[0], -np.inf))) == 1  # CALL, the NaN
    for reference in (False, True):
        strategy = StreamStrategy(POLICY, None, forests, reference=reference)  # type: ignore[arg-type]
        plan = strategy.plan(rows, scores, loans)
        assert plan.decide(0, "LOW", "OTHERS", 0.1, None) == "AUTOMATED_REMINDER"
        if not reference:
            assert plan._tier == [None]  # type: ignore[attr-defined]  # (not vouched for)


EXPERIMENT = """
experiment:
  id: plan-processor
  arms:
    - {name: champion, policy: table, share: 0.4}
    - {name: challenger, policy: learned, share: 0.4, epsilon: 0.3}
    - {name: explorer, policy: table, share: 0.2, epsilon: 0.5}
"""


def run_logged(
    processor: PartitionProcessor, records: list[tuple[int, bytes, bytes]], batch: int
) -> tuple[list[str], list[tuple[str, str, int]]]:
    """The emitted changes (their reprs: floats to the last bit) and every question the
    guardrails were asked, in order (the decision and every propensity's ``guard(w)``)."""
    asked: list[tuple[str, str, int]] = []
    choose_at = processor.guardrails.choose_at

    def logged(state: LoanState, wanted: str, at: int, facts: object) -> object:
        asked.append((state.loan_id, wanted, at))
        return choose_at(state, wanted, at, facts)  # type: ignore[arg-type]

    # (the instance attribute shadows the method; the policy's guardrails are shared)
    processor.guardrails.choose_at = logged  # type: ignore[method-assign]
    changes: list[str] = []
    try:
        for start in range(0, len(records), batch):
            changes += [repr(c) for c in processor.process(records[start : start + batch]).changes]
    finally:
        del processor.guardrails.choose_at
    return changes, asked


@pytest.mark.parametrize("arms", [False, True])
def test_the_processor_emits_the_same_with_either_plan(
    bundle, treatment_model: Path, records, tmp_path: Path, arms: bool
) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(DEFAULT_POLICY.read_text() + (EXPERIMENT if arms else ""))
    policy = Policy.load(policy_file)
    loaded = StreamStrategy.load(policy, policy_file, treatment_model)
    assert isinstance(loaded, StreamStrategy)
    reference = StreamStrategy(loaded.base, loaded.experiment, loaded.forests, reference=True)
    for batch in (97, 2000):
        fast = run_logged(PartitionProcessor(bundle, loaded, 0), records, batch)
        slow = run_logged(PartitionProcessor(bundle, reference, 0), records, batch)
        assert len(fast[0]) > 100 and len(fast[1]) >= len(records) // 2
        assert fast == slow
    rules = " ".join(fast[0])
    assert "learned: largest" in rules  # (a kept strategy is no change: not emitted)
    assert ("explore: uniform" in rules) == arms


def test_both_plans_value_rows_with_the_reported_income() -> None:
    """LoanEvent v4's reported income reaches the treatment model's ``income_ratio`` through
    either plan, row for row (NaN: nothing reported, ratio 1)."""
    from models.strategy.simulator import FEATURES
    from models.strategy.stream_features import decision_features

    seen: list[np.ndarray] = []

    class Recording(TableForests):
        def predict(self, x: np.ndarray) -> np.ndarray:
            seen.append(x.copy())
            return super().predict(x)

    rng = np.random.default_rng(7)
    rows, scores, loans = random_batch(rng, 40)
    rows[:, FEATURE_NAMES.index("monthly_income")] = 3000.0  # at origination
    reported = np.where(rng.random(40) < 0.5, np.nan, rng.uniform(100, 5000, 40))
    forests = Recording(random_values(rng, 40, 2.0), 2.0)
    for reference in (True, False):
        strategy = StreamStrategy(POLICY, None, forests, reference=reference)  # type: ignore[arg-type]
        strategy.plan(rows, scores, loans, reported)
    ratio = FEATURES.index("income_ratio")
    want = decision_features(rows, np.asarray(scores), reported)[:, ratio]
    assert len(seen) == 2 and (want != 1.0).any()
    assert np.array_equal(seen[0][:, ratio], want) and np.array_equal(seen[1][:, ratio], want)
