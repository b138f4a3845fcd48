"""The learned policy and the champion/challenger arms in the stream (issue 14): a
:class:`~models.serving.contracts.StrategyPolicy` that the processor (``consumer.processor``,
shared by ``serve`` and ``score``) asks once per batch for a :class:`BatchPlan`.

What the plan does, and why:

- **Arms**: each loan's arm is :meth:`models.strategy.arms.Experiment.assign` (a stable hash of
  experiment id and loan id), the same function the simulator's experiment uses; without an
  ``experiment:`` section every loan is on one implicit arm, ``learned`` (no experiment id).
- **Learned**: the treatment model's expected net recovery of every strategy for the batch's
  learned-arm rows, in ONE batched evaluation per strategy forest (:class:`TreatmentForests`,
  the early-warning forest's compiled kernel, ``models.serving._forest_kernel``), from the
  decision features of :mod:`models.strategy.stream_features`; then the allowed argmax with
  value hysteresis (:func:`models.strategy.learned.keep_or_best`, the offline rule), made in
  numpy for the whole batch (:class:`BatchPlan`) but for the loan's current strategy, which
  only the event knows; :class:`RowPlan`, the per-event code, is its reference twin.
  Table-arm rows are valued only when they emit (for ``expected_net_recovery``), in one more
  batched call: the hot path evaluates forests only where the decision uses them.
- **Exploration** (``epsilon``), **per episode**: the episode is
  :func:`models.strategy.arms.episode_key` of the event's own feature row (the delinquency
  spell, or the performing stretch, the event belongs to: two counters every state has, no
  new byte per loan), and the draw is :meth:`~models.strategy.arms.Experiment.explores` /
  :meth:`~models.strategy.arms.Experiment.explored` of (experiment id, loan id, episode), the
  functions the simulator's experiment uses. So an exploring episode wants its explored
  strategy at every event until the loan cures (or misses again, after a cure), whatever the
  batching, in the stream and the batch reference alike; the ladder then climbs to it and
  stays there instead of being asked for a fresh strategy at the next event.
- **Propensity**: the probability that the arm's randomisation produced the strategy that was
  *emitted*, i.e. after the guardrails: ``sum over wanted w of P(w) 1[guard(w) = emitted]``
  with ``P(w) = (1 - epsilon) 1[w = arm's pick] + epsilon / k`` over the ``k`` allowed, at
  this event's pick, allowed set and guardrail facts (1 for an arm without exploration; 1
  under a hold, where every w becomes HOLD). Exact given the state at an episode's first
  decision, where the draw is independent of everything the state holds (a new key); at later
  decisions of the same episode it is that same probability at the event's inputs, which
  the episode's earlier emissions may have shaped (docs/STRATEGY.md, "Exploration per
  episode").

Every choice still passes through the processor's one guardrail layer (hold, time-barred debt,
Reg F timing, ladder): the plan only says what the policy *wants*.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from models.errors import ModelsError
from models.features.state import LoanState
from models.native import load_kernel
from models.serving.bundle import BundleError
from models.serving.contracts import ExperimentFields
from models.serving.guardrails import Guardrails
from models.serving.policy import TIERS, Policy
from models.strategy.arms import CONSECUTIVE, MISSED, Arm, Experiment, ExperimentError, episode_key
from models.strategy.bundle import load_treatment_bundle, read_metadata
from models.strategy.learned import DEFAULT_MARGIN, keep_or_best
from models.strategy.rules import allowed_strategies
from models.strategy.simulator import FEATURES, STRATEGIES
from models.strategy.stream_features import decision_features
from models.strategy.treatment import BALANCE, TreatmentModel

_NOT_ALLOWED = float("-inf")
_INDEX = {s: k for k, s in enumerate(STRATEGIES)}
LEARNED_ONLY = Arm("learned", "learned", 1.0, 0.0)  # --strategy-model without an experiment


class StrategySetupError(ModelsError, ValueError):
    """The strategy model and the policy's experiment do not fit together; the message names
    the setting and the fix, and :attr:`setting` the flag at fault (``--policy`` or
    ``--strategy-model``: a SIGHUP reload logs which one failed, ``consumer.reload``)."""

    def __init__(self, message: str, setting: str = "--policy") -> None:
        super().__init__(message)
        self.setting = setting


class _RegressionTree:
    """A regression ``Tree`` seen as the classifier trees the forest kernel flattens: the
    kernel reads ``value[:, 0, 1]`` (a class-1 fraction) and sums it over trees in estimator
    order, which for a regressor's leaf values is exactly ``RandomForestRegressor.predict``'s
    arithmetic (mean of the trees' leaf values in float64)."""

    def __init__(self, tree: object) -> None:
        self.node_count = tree.node_count  # type: ignore[attr-defined]
        self.children_left = tree.children_left  # type: ignore[attr-defined]
        self.children_right = tree.children_right  # type: ignore[attr-defined]
        self.feature = tree.feature  # type: ignore[attr-defined]
        self.threshold = tree.threshold  # type: ignore[attr-defined]
        self.missing_go_to_left = getattr(tree, "missing_go_to_left", None)
        leaf = np.asarray(tree.value, dtype=np.float64)[:, 0, 0]  # type: ignore[attr-defined]
        self.value = np.stack([np.zeros_like(leaf), leaf], axis=1)[:, None, :]


class TreatmentForests:
    """The treatment model's per-strategy forests for serving: ``predict`` equals
    :meth:`TreatmentModel.predict` (to the last bits on the tests' bundles) without
    scikit-learn's per-call validation and joblib dispatch, through the compiled forest kernel
    when it is built (``native`` as in :class:`models.serving.forest.FastCalibratedForest`)."""

    def __init__(
        self,
        model: TreatmentModel,
        version: str = "",
        margin: float = DEFAULT_MARGIN,
        native: bool | None = None,
    ) -> None:
        self.version = version
        self.margin = margin  # the learned policy's value hysteresis, from the bundle
        self.horizon = model.horizon
        kernel = None if native is False else load_kernel("serving._forest_kernel")
        if native and kernel is None:
            raise ImportError("models.serving._forest_kernel is not built (pip install -e .)")
        self._trees = [[e.tree_ for e in model.arms[s].estimators_] for s in STRATEGIES]
        self._kernels = (
            [
                kernel.ForestKernel([_RegressionTree(t) for t in trees], len(FEATURES))
                for trees in self._trees
            ]
            if kernel is not None
            else None
        )

    @classmethod
    def load(cls, directory: str | Path) -> TreatmentForests:
        """A verified treatment bundle (skops, type whitelist, hashes: models.strategy.bundle)."""
        meta = read_metadata(directory)
        margin = float(meta.get("value_hysteresis", DEFAULT_MARGIN))
        return cls(load_treatment_bundle(directory), str(meta["version"]), margin)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Expected net recovery (rows x STRATEGIES) over the horizon."""
        x32 = np.ascontiguousarray(x, dtype=np.float32)  # as scikit-learn's trees read them
        balance = np.maximum(x[:, BALANCE], 1.0)
        out = np.empty((len(x), len(STRATEGIES)))
        for k in range(len(STRATEGIES)):
            out[:, k] = self._mean_vote(x32, k)
        return out * balance[:, None]

    def predict_strategy(self, x: np.ndarray, k: int) -> np.ndarray:
        """Column ``k`` of :meth:`predict` alone (one strategy's forest, not all of them), bit
        for bit: the same mean vote, scaled by the balance in the same order."""
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        return self._mean_vote(x32, k) * np.maximum(x[:, BALANCE], 1.0)

    def _mean_vote(self, x32: np.ndarray, k: int) -> np.ndarray:
        """Strategy ``k``'s forest: the mean of its trees' leaf values per row."""
        if self._kernels is not None:
            return np.asarray(self._kernels[k].sum_votes(x32), dtype=np.float64)
        total = np.zeros(len(x32))  # the reference: leaf values summed in estimator order
        for tree in self._trees[k]:
            total += tree.value[tree.apply(x32), 0, 0]
        return total / len(self._trees[k])


class StreamStrategy:
    """The table, the learned policy and the experiment's arms behind ``StrategyPolicy``."""

    def __init__(
        self,
        policy: Policy,
        experiment: Experiment | None,
        forests: TreatmentForests | None,
        reference: bool = False,
    ) -> None:
        where = policy.path or "policy"
        if experiment is None and forests is None:
            raise StrategySetupError("neither an experiment: section nor --strategy-model")
        learned = [a.name for a in (experiment.arms if experiment else ()) if a.policy == "learned"]
        if learned and forests is None:
            raise StrategySetupError(
                f"--policy {where}: experiment arm {learned[0]!r} is policy: learned; pass "
                "--strategy-model DIR (a bundle from `loan-recovery train-strategy`)"
            )
        self.base = policy
        self.experiment = experiment
        self.forests = forests
        self.margin = forests.margin if forests else DEFAULT_MARGIN
        self.version = policy.version + (f"+{forests.version}" if forests else "")
        self.guardrails: Guardrails | None = policy.guardrails
        self.priorities = policy.priorities
        self.tier = policy.tier
        self.decide = policy.decide
        self.rule = policy.rule
        self._allowed = allowed_strategies(policy)
        self._ok = {t: [s in self._allowed[t] for s in STRATEGIES] for t in TIERS}
        self._ok_matrix = np.array([self._ok[t] for t in TIERS])  # TIERS x STRATEGIES
        self._plan = RowPlan if reference else BatchPlan  # reference: the per-row twin
        self._experiment_id = experiment.id if experiment else None
        self.arm_of: Callable[[str], Arm] = (
            lru_cache(maxsize=1 << 16)(experiment.assign) if experiment else lambda _: LEARNED_ONLY
        )

    @classmethod
    def load(
        cls, policy: Policy, policy_path: Path | None, strategy_model: Path | None
    ) -> Policy | StreamStrategy:
        """What ``serve`` / ``score`` run: the plain table when the policy file has no
        ``experiment:`` and no ``--strategy-model`` is given, else this. Errors name the
        setting: ``--policy FILE: experiment...`` or ``--strategy-model DIR: ...``."""
        try:
            experiment = Experiment.load(policy_path) if policy_path else None
        except ExperimentError as error:
            raise StrategySetupError(f"--policy {error}") from None
        if experiment is None and strategy_model is None:
            return policy
        forests = None
        if strategy_model is not None:
            try:
                forests = TreatmentForests.load(strategy_model)
            except (BundleError, FileNotFoundError) as error:
                raise StrategySetupError(
                    f"--strategy-model {strategy_model}: {error} (pass the directory "
                    "`loan-recovery train-strategy --out` wrote)",
                    setting="--strategy-model",
                ) from None
        return cls(policy, experiment, forests)

    def plan(
        self,
        rows: np.ndarray,
        scores: Sequence[float],
        states: Sequence[LoanState],
        reported_income: np.ndarray | None = None,
    ) -> RowPlan | BatchPlan:
        return self._plan(self, rows, scores, states, reported_income)


class RowPlan:
    """One batch's decisions, the learned choice made per event in plain Python: the
    reference twin of :class:`BatchPlan` (``StreamStrategy(..., reference=True)``; the tests
    hold the two to the same decisions, rules, propensities and fields, bit for bit). Built
    before the processor's per-event loop (one forest evaluation for the learned-arm rows),
    asked per event in offset order."""

    def __init__(
        self,
        owner: StreamStrategy,
        rows: np.ndarray,
        scores: Sequence[float],
        states: Sequence[LoanState],
        reported_income: np.ndarray | None = None,
    ) -> None:
        self._owner = owner
        self._rows, self._scores = rows, scores
        self._reported = reported_income  # per row, NaN: none (LoanEvent v4)
        self._loans = [s.loan_id for s in states]
        self._arms = [owner.arm_of(loan) for loan in self._loans]
        self._values: dict[int, list[float]] = {}
        learned = [i for i, a in enumerate(self._arms) if a.policy == "learned"]
        self._value(learned)
        # Per decided row, what its rule and propensity need; the rule text is built only for
        # emitted rows (rule()), the propensity only for emitted rows too (settle()): the
        # per-event path builds no string and no object beyond this tuple.
        self._decided: dict[int, tuple[str, str, str, str, str, float, str | None]] = {}
        self._settled: dict[int, tuple[str, float]] = {}

    def _value(self, wanted: list[int]) -> None:
        """Expected net recovery of every strategy for rows ``wanted``, in one batch."""
        missing = [i for i in wanted if i not in self._values]
        if not missing or self._owner.forests is None:
            return
        scores = np.asarray([self._scores[i] for i in missing])
        reported = None if self._reported is None else self._reported[missing]
        x = decision_features(self._rows[missing], scores, reported)
        for i, values in zip(missing, self._owner.forests.predict(x).tolist(), strict=True):
            self._values[i] = values

    def _value_at(self, i: int, k: int) -> float | None:
        """Row ``i``'s expected net recovery of ``STRATEGIES[k]`` (None: not valued)."""
        values = self._values.get(i)
        return None if values is None else values[k]

    def decide(self, i: int, tier: str, segment: str, score: float, current: str | None) -> str:
        """What row ``i``'s arm wants (before the guardrails)."""
        owner, arm = self._owner, self._arms[i]
        if arm.policy == "table":
            pick, kind = owner.base.decide(tier, segment, score, current), "table"
        else:
            values = self._values[i]
            masked = [
                v if ok else _NOT_ALLOWED for v, ok in zip(values, owner._ok[tier], strict=True)
            ]
            best, kept = keep_or_best(masked, current, owner.margin)
            pick, kind = STRATEGIES[best], ("kept" if kept else "best")
        wanted = pick
        experiment = owner.experiment
        if arm.epsilon > 0 and experiment is not None:  # (only an experiment's arms explore)
            loan, row = self._loans[i], self._rows[i]
            episode = episode_key(row[MISSED], row[CONSECUTIVE])
            if experiment.explores(arm, loan, episode):
                wanted = experiment.explored(loan, episode, owner._allowed[tier])
                kind = "explore"
        self._decided[i] = (kind, pick, wanted, tier, segment, score, current)
        return wanted

    def rule(self, i: int) -> str:
        """The rule behind row ``i``'s decision, e.g. ``arm challenger: learned: largest
        expected net recovery 5310`` (asked for emitted rows only)."""
        owner, arm = self._owner, self._arms[i]
        kind, pick, _, tier, segment, score, current = self._decided[i]
        if kind == "table":
            text = owner.base.rule(tier, segment, score, current)
        elif kind == "kept":
            text = f"learned: kept {pick} within {owner.margin:g} of the best expected net"
        elif kind == "best":
            value = self._value_at(i, STRATEGIES.index(pick))
            text = f"learned: largest expected net recovery {value:.0f}"
        else:
            k = len(owner._allowed[tier])
            episode = episode_key(self._rows[i, MISSED], self._rows[i, CONSECUTIVE])
            text = (
                f"explore: uniform among {k} allowed (epsilon {arm.epsilon:g}, episode {episode})"
            )
        return text if owner._experiment_id is None else f"arm {arm.name}: {text}"

    def settle(self, i: int, emitted: str, guard: Callable[[str], str]) -> None:
        """Row ``i`` emits ``emitted`` (what the guardrails made of :meth:`decide`'s
        choice): its exact propensity. ``guard(w)`` is what the guardrails would have made of
        ``w`` at this event (pure: asked before the decision is recorded)."""
        epsilon = self._arms[i].epsilon
        if epsilon == 0:
            self._settled[i] = (emitted, 1.0)
            return
        _, pick, _, tier, *_ = self._decided[i]
        options = self._owner._allowed[tier]
        k = len(options)
        chance = dict.fromkeys(options, epsilon / k)
        chance[pick] = chance.get(pick, 0.0) + (1 - epsilon)
        # (min: k terms of epsilon / k can round to a hair above 1 when all map to one)
        propensity = min(1.0, sum(p for w, p in chance.items() if guard(w) == emitted))
        self._settled[i] = (emitted, propensity)

    def fields(self) -> dict[int, ExperimentFields]:
        """The experiment fields of every settled row (one batched valuation for the rows not
        valued yet: the table arms' emitted rows)."""
        self._value_settled()
        experiment_id = self._owner._experiment_id
        out = {}
        for i, (emitted, propensity) in self._settled.items():
            k = _INDEX.get(emitted)
            expected = self._value_at(i, k) if k is not None else None
            out[i] = ExperimentFields(experiment_id, self._arms[i].name, propensity, expected)
        return out

    def _value_settled(self) -> None:
        """Value the settled rows not valued yet (every strategy: the reference)."""
        self._value(list(self._settled))


class BatchPlan(RowPlan):
    """:class:`RowPlan` with the learned choice made for the whole batch in numpy: the mask of
    allowed strategies (a boolean matrix by tier), the first maximum (``argmax``, the tie order
    of :func:`~models.strategy.learned.keep_or_best`) and, per row, the strategies hysteresis
    may keep (allowed and within ``margin`` of the best, as a bit mask). Per event only the
    loan's current strategy, which earlier events of the batch may have changed, is looked
    up. The values stay one array, read per row only for an emitted rule or field.

    The comparisons are ``keep_or_best``'s on the same float64 values, so the choice is the
    same bit for bit; the rows it cannot vouch for are decided by the reference code: a NaN
    value (``argmax`` takes the first NaN, Python's ``max`` does not) and an event whose tier
    is not the one the batch derived from the policy's thresholds.

    Measured (CPU time, docs/STRATEGY.md "Throughput"): the learned policy's decide stage
    29.4 -> 23.3 us/event against the table's 10.6 (the two plans in one process, 3,000
    loans, min of 5), processor events/s 0.49 -> 0.60 of the table's; what remains is mostly
    ``TreatmentForests.predict`` (~11.4 us per learned row)."""

    def __init__(
        self,
        owner: StreamStrategy,
        rows: np.ndarray,
        scores: Sequence[float],
        states: Sequence[LoanState],
        reported_income: np.ndarray | None = None,
    ) -> None:
        self._owner = owner
        self._rows, self._scores = rows, scores
        self._reported = reported_income  # per row, NaN: none (LoanEvent v4)
        self._loans = [s.loan_id for s in states]
        n = len(self._loans)
        if owner.experiment is None:  # every loan on the implicit learned arm
            self._arms = [LEARNED_ONLY] * n
            learned = list(range(n))
        else:
            self._arms = [owner.arm_of(loan) for loan in self._loans]
            learned = [i for i, a in enumerate(self._arms) if a.policy == "learned"]
        self._decided: dict[int, tuple[str, str, str, str, str, float, str | None]] = {}
        self._settled: dict[int, tuple[str, float]] = {}
        self._table = np.empty((n, len(STRATEGIES)))  # every valued row's values
        self._valued = np.zeros(n, dtype=bool)
        self._emitted: dict[int, tuple[int, float]] = {}  # row -> (k, value): fields() only
        # Per row: the tier the choice was made for (None: not made here), the best
        # strategy's index and the strategies hysteresis may keep (bit k: STRATEGIES[k])
        self._tier: list[str | None] = [None] * n
        self._best: list[int] = [0] * n
        self._keep: list[int] = [0] * n
        if learned and self._value(learned):
            self._choose(np.asarray(learned))

    def _value(self, wanted: list[int]) -> bool:
        """Values rows ``wanted`` not valued yet, in one batch (False: none was)."""
        if not wanted or self._owner.forests is None:
            return False
        index = np.asarray(wanted)
        missing = index[~self._valued[index]]
        if not len(missing):
            return False
        scores = np.asarray(self._scores, dtype=np.float64)[missing]
        reported = None if self._reported is None else self._reported[missing]
        x = decision_features(self._rows[missing], scores, reported)
        self._table[missing] = self._owner.forests.predict(x)
        self._valued[missing] = True
        return True

    def _value_at(self, i: int, k: int) -> float | None:
        if self._valued[i]:
            return float(self._table[i, k])
        emitted = self._emitted.get(i)
        return emitted[1] if emitted is not None and emitted[0] == k else None

    def _value_settled(self) -> None:
        """For :meth:`RowPlan.fields`: a settled row not valued yet (a table arm's emitted
        row) is valued for its emitted strategy only: its field needs no other (the reference
        values every strategy; the same numbers bit for bit, ``predict_strategy``).
        Measured (``bench.processor --strategy``'s arms, 77,106 events): 7,113 of the 22,880
        valued rows take this path, at 1.4 us of CPU per row against 7-9 for all strategies,
        about 0.6 us per event of the arms' ~18."""
        by_strategy: dict[int, list[int]] = {}
        for i, (emitted, _) in self._settled.items():
            k = _INDEX.get(emitted)
            if k is not None and not self._valued[i] and i not in self._emitted:
                by_strategy.setdefault(k, []).append(i)
        forests = self._owner.forests
        if forests is not None:
            scores = np.asarray(self._scores, dtype=np.float64)
            for k, rows in by_strategy.items():
                index = np.asarray(rows)
                reported = None if self._reported is None else self._reported[index]
                x = decision_features(self._rows[index], scores[index], reported)
                values = forests.predict_strategy(x, k).tolist()
                self._emitted.update(zip(rows, ((k, v) for v in values), strict=True))

    def _choose(self, learned: np.ndarray) -> None:
        owner, n = self._owner, len(self._loans)
        scores = np.asarray(self._scores, dtype=np.float64)[learned]
        base = owner.base
        # Policy.tier's comparisons (a NaN score is LOW in both); decide() checks the tier it
        # is given against this one
        code = np.where(
            scores > base.high,
            TIERS.index("HIGH"),
            np.where(scores > base.moderate, TIERS.index("MODERATE"), TIERS.index("LOW")),
        )
        masked = np.where(owner._ok_matrix[code], self._table[learned], _NOT_ALLOWED)
        best = masked.argmax(axis=1)
        top = masked[np.arange(len(learned)), best]
        keep = (masked > _NOT_ALLOWED) & (masked >= (top - owner.margin)[:, None])
        sure = ~np.isnan(masked).any(axis=1)
        tier = np.full(n, None, dtype=object)
        tier[learned[sure]] = np.asarray(TIERS, dtype=object)[code[sure]]
        full = np.zeros((2, n), dtype=np.int64)
        full[0, learned] = best
        full[1, learned] = keep.astype(np.int64) @ (1 << np.arange(len(STRATEGIES)))
        self._tier = tier.tolist()
        self._best, self._keep = full.tolist()

    def decide(self, i: int, tier: str, segment: str, score: float, current: str | None) -> str:
        """What row ``i``'s arm wants (before the guardrails): :meth:`RowPlan.decide`."""
        owner, arm = self._owner, self._arms[i]
        if arm.policy == "table":
            pick, kind = owner.base.decide(tier, segment, score, current), "table"
        elif tier == self._tier[i]:
            best = self._best[i]
            k = _INDEX.get(current) if current is not None else None
            if k is not None and self._keep[i] >> k & 1:
                pick, kind = STRATEGIES[k], ("kept" if k != best else "best")
            else:
                pick, kind = STRATEGIES[best], "best"
        else:  # a row the batch's choice does not vouch for: the reference, on this row
            masked = [
                v if ok else _NOT_ALLOWED
                for v, ok in zip(self._table[i].tolist(), owner._ok[tier], strict=True)
            ]
            k, kept = keep_or_best(masked, current, owner.margin)
            pick, kind = STRATEGIES[k], ("kept" if kept else "best")
        wanted = pick
        experiment = owner.experiment
        if arm.epsilon > 0 and experiment is not None:  # (only an experiment's arms explore)
            loan, row = self._loans[i], self._rows[i]
            episode = episode_key(row[MISSED], row[CONSECUTIVE])
            if experiment.explores(arm, loan, episode):
                wanted = experiment.explored(loan, episode, owner._allowed[tier])
                kind = "explore"
        self._decided[i] = (kind, pick, wanted, tier, segment, score, current)
        return wanted
