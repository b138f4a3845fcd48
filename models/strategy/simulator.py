"""A closed-loop monthly collections book with known, heterogeneous strategy effects (issue 14
point 7). It exists to prove (or disprove) the treatment model, the learned policy and the
off-policy estimators: the learner only ever sees the logged decisions and outcomes
(:mod:`models.strategy.decision_log`), never the effect parameters below.

Generating process (``seed`` -> everything; docs/STRATEGY.md has the same in prose)
-----------------------------------------------------------------------------------
Each loan enters collections delinquent. At entry the system sees its **state** (the decision
features :data:`FEATURES`): balance, monthly installment (``emi``), monthly income, the income
ratio now vs at origination (``income_ratio``; an income-shocked borrower has 0.3-0.7, the rest
0.85-1.1), collateral value / balance (35% are secured, 0.5-1.6), months delinquent, the share
of installments paid on time before delinquency (``on_time_share``), the early-warning score
(``risk_score``, a noisy view of the latent risk ``z``) and the system's own past treatments
(``prior_attempts``, ``prior_method``: a reminder, call or settlement offer). Latent risk
``z = -0.5 + 1.3 shock + 0.35 (months_delinquent - 1) - 2.5 (on_time - 0.67)
+ 0.8 log(burden / 0.15) + N(0, 0.5)`` where ``burden = emi / (income x income_ratio)``.

One strategy is chosen at entry and kept for ``horizon`` months (the episode). Every month the
loan, while open, draws one of: **cure** (back to performing: the whole balance counts as
recovered), **settlement** (a lump sum, then closed), **write-off** (closed, nothing more), or
else an installment **payment** (``emi``). Baseline logits: pay ``0.3 - 0.9 z``, cure
``-3.2 - 0.4 z``, settle ``-5``, write-off ``-3.6 + 0.7 z``. Who responds to what, and why:

- AUTOMATED_REMINDER: pay +1.6 for *forgetful* payers (on-time share > 0.8 and no income
  shock) who merely missed a date, +0.1 otherwise; write-off +0.3 when ``z > 1`` (a high-risk
  loan left to reminders drifts).
- CALL: pay +0.7, +0.5 more in the first two months of delinquency, cure +0.4; the effect
  falls to 30% for a borrower already called twice or more (``prior_method`` CALL and
  ``prior_attempts >= 2``: contact fatigue).
- REPAYMENT_PLAN: for income-shocked borrowers pay +0.9, cure +1.5, write-off -0.6 (they can
  pay, just not the old installment); for the rest pay +0.2, cure -0.3.
- SETTLEMENT_OFFER: settle logit ``-2.6 + 1.6 shock + 1.0 log(balance / 6000)`` (large balances
  of shocked borrowers take a discount), paying 55% of the balance; write-off -0.3.
- DEBT_COLLECTOR: pay +1.0 for unshocked borrowers (able but unwilling), +0.2 for shocked;
  cure +0.3 unshocked; write-off -0.3; the agency's contingency fee is a cost (policy file).
- LEGAL_NOTICE: recovery through the collateral, logit ``-3.5 + 2.5 min(collateral ratio, 1.5)``,
  paying ``min(balance, 0.85 collateral)``; pay +0.3; write-off +1.2 for loans with collateral
  ratio < 0.3 (unsecured borrowers pushed to insolvency).
- Any strategy other than the two above settles (borrower-initiated, rare) at 70%.

Costs are the policy file's ``costs:`` (:mod:`models.serving.costs`): ``per_month`` for every
month the loan is open on the strategy (the month it closes included) and ``fee_rate`` on what
is recovered while on it. Net recovery = recovered - costs.

Common random numbers: borrowers come from one stream of ``SeedSequence(seed)``, the monthly
uniforms (one for the exit draw, one for the payment draw, per loan per month) from a second,
and a randomised logging policy's choices from a third; none depends on the policy simulated,
so two policies run on one seed meet the same borrowers and the same shocks (and a loan with
the same strategy under both has the same outcome).

>>> from models.serving.policy import Policy
>>> policy = Policy.load(None)
>>> book = Book.generate(500, seed=1, policy=policy)
>>> table = book.run(book.table_choice())
>>> again = book.run(book.table_choice())
>>> bool((table.net == again.net).all()), table.summary()["loans"]
(True, 500)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.errors import ModelsError
from models.serving.policy import TIERS, Policy
from models.strategy.rules import allowed_strategies, choosable

STRATEGIES = (
    "AUTOMATED_REMINDER",
    "CALL",
    "REPAYMENT_PLAN",
    "SETTLEMENT_OFFER",
    "DEBT_COLLECTOR",
    "LEGAL_NOTICE",
)
FEATURES = (
    "balance",
    "emi",
    "monthly_income",
    "income_ratio",
    "collateral_ratio",
    "months_delinquent",
    "on_time_share",
    "risk_score",
    "prior_attempts",
    "prior_method",  # 0 none, else 1 + index in STRATEGIES
)
DEFAULT_HORIZON = 12
# What the lender learns of an income shock before the entry decision: each prior contact
# (``prior_attempts``, the stream's collection_attempts) of a shocked borrower was a
# collections conversation in which they disclosed the hardship with this probability.
DISCLOSURE_RATE = 0.5


class SimulatorError(ModelsError, ValueError):
    """A policy the simulator cannot run (unknown strategy, no costs)."""


@dataclass(frozen=True)
class Choice:
    """One strategy index (into :data:`STRATEGIES`) per loan and its propensity."""

    strategy: np.ndarray
    propensity: np.ndarray


@dataclass(frozen=True)
class Outcome:
    """Per loan: what was recovered, what it cost, and how the episode ended."""

    choice: Choice
    recovered: np.ndarray
    cost: np.ndarray
    written_off: np.ndarray
    months_open: np.ndarray

    @property
    def net(self) -> np.ndarray:
        return self.recovered - self.cost

    def summary(self) -> dict[str, float | int | dict[str, float]]:
        """Per-loan means (what ``simulate --json`` prints) and the strategy mix."""
        n = len(self.net)
        counts = np.bincount(self.choice.strategy, minlength=len(STRATEGIES)) / max(n, 1)
        return {
            "loans": n,
            "net_recovery_per_loan": float(self.net.mean()),
            "recovered_per_loan": float(self.recovered.mean()),
            "cost_per_loan": float(self.cost.mean()),
            "write_off_rate": float(self.written_off.mean()),
            "strategy_mix": {s: float(c) for s, c in zip(STRATEGIES, counts, strict=True)},
        }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Book:
    """A seeded book of delinquent loans, their monthly shocks and the effect model."""

    def __init__(
        self, features: np.ndarray, z: np.ndarray, uniforms: np.ndarray, policy: Policy, seed: int
    ) -> None:
        unknown = sorted(set(choosable(policy)) - set(STRATEGIES))
        if unknown:
            raise SimulatorError(
                f"{policy.path or 'policy'}: strategies: the simulator has no effect model "
                f"for {unknown}; it knows {', '.join(STRATEGIES)}"
            )
        missing = [s for s in STRATEGIES if s not in policy.priorities or s not in policy.costs]
        if missing:
            raise SimulatorError(
                f"{policy.path or 'policy'}: costs: missing for {missing}; the simulator needs "
                "a cost for every strategy (see models/serving/default_policy.yaml)"
            )
        self.x = features
        self.z = z
        self.uniforms = uniforms
        self.policy = policy
        self.seed = seed
        self.horizon = uniforms.shape[1]
        col = {name: features[:, i] for i, name in enumerate(FEATURES)}
        self.col = col
        self.tier = np.array([policy.tier(float(s)) for s in col["risk_score"]])
        burden = col["emi"] / (col["monthly_income"] * col["income_ratio"])
        self.segment = np.where(
            (burden > 0.3) | (col["months_delinquent"] >= 3),
            "HIGH_RISK",
            np.where((col["on_time_share"] > 0.8) & (burden < 0.15), "LOW_RISK", "OTHERS"),
        )
        allowed = allowed_strategies(policy)
        self.allowed = np.zeros((len(z), len(STRATEGIES)), dtype=bool)
        for tier in TIERS:
            rows = self.tier == tier
            for s in allowed[tier]:
                self.allowed[rows, STRATEGIES.index(s)] = True
        self._probabilities = self._effects()

    @classmethod
    def generate(
        cls, loans: int, seed: int, policy: Policy, horizon: int = DEFAULT_HORIZON
    ) -> Book:
        """Draw ``loans`` borrowers and their ``horizon`` months of shocks from ``seed``."""
        if loans < 1 or horizon < 1:
            raise SimulatorError(f"loans ({loans}) and horizon ({horizon}) must be >= 1")
        borrowers, shocks = (
            np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)
        )
        rng, n = borrowers, loans
        balance = np.clip(np.exp(rng.normal(np.log(6000), 0.7, n)), 500, 60000)
        emi = balance / rng.integers(6, 49, n)
        income = np.exp(rng.normal(np.log(2500), 0.45, n))
        shocked = rng.random(n) < 0.3
        income_ratio = np.where(shocked, rng.uniform(0.3, 0.7, n), rng.uniform(0.85, 1.1, n))
        collateral = np.where(rng.random(n) < 0.35, rng.uniform(0.5, 1.6, n), 0.0)
        months = 1.0 + rng.poisson(1.2, n)
        on_time = rng.beta(4, 2, n)
        prior_attempts = rng.poisson(1.0, n).astype(float)
        # A prior reminder, call or settlement offer (codes 1 + index in STRATEGIES): the
        # methods a stream CollectionAttempt can record (models.strategy.stream_features).
        prior_method = np.where(
            prior_attempts > 0, np.array([0.0, 1.0, 2.0, 4.0])[rng.integers(1, 4, n)], 0.0
        )
        burden = emi / (income * income_ratio)
        z = (
            -0.5
            + 1.3 * shocked
            + 0.35 * (months - 1)
            - 2.5 * (on_time - 0.67)
            + 0.8 * np.log(burden / 0.15)
            + rng.normal(0, 0.5, n)
        )
        risk_score = _sigmoid(z + rng.normal(0, 0.3, n))
        features = np.column_stack(
            [
                balance,
                emi,
                income,
                income_ratio,
                collateral,
                months,
                on_time,
                risk_score,
                prior_attempts,
                prior_method,
            ]
        )
        uniforms = shocks.random((n, horizon, 2))
        return cls(features, z, uniforms, policy, seed)

    def _effects(self) -> dict[str, np.ndarray]:
        """Monthly probabilities per (strategy, loan): cure, settle, write-off, pay, and the
        settlement amount as a fraction of the balance (or of the collateral, for legal)."""
        c, z = self.col, self.z
        n, k = len(z), len(STRATEGIES)
        shock = (c["income_ratio"] < 0.75).astype(float)
        forgetful = ((c["on_time_share"] > 0.8) & (shock == 0)).astype(float)
        pay = np.tile(0.3 - 0.9 * z, (k, 1))
        cure = np.tile(-3.2 - 0.4 * z, (k, 1))
        settle = np.full((k, n), -5.0)
        wo = np.tile(-3.6 + 0.7 * z, (k, 1))
        index = {s: i for i, s in enumerate(STRATEGIES)}
        r, ca, pl, so, dc, ln = (index[s] for s in STRATEGIES)
        pay[r] += 1.6 * forgetful + 0.1 * (1 - forgetful)
        wo[r] += 0.3 * (z > 1)
        fatigue = np.where((c["prior_method"] == ca + 1) & (c["prior_attempts"] >= 2), 0.3, 1.0)
        pay[ca] += fatigue * (0.7 + 0.5 * (c["months_delinquent"] <= 2))
        cure[ca] += fatigue * 0.4
        pay[pl] += 0.9 * shock + 0.2 * (1 - shock)
        cure[pl] += 1.5 * shock - 0.3 * (1 - shock)
        wo[pl] -= 0.6 * shock
        settle[so] = -2.6 + 1.6 * shock + 1.0 * np.log(c["balance"] / 6000)
        wo[so] -= 0.3
        pay[dc] += 1.0 * (1 - shock) + 0.2 * shock
        cure[dc] += 0.3 * (1 - shock)
        wo[dc] -= 0.3
        settle[ln] = -3.5 + 2.5 * np.minimum(c["collateral_ratio"], 1.5)
        pay[ln] += 0.3
        wo[ln] += 1.2 * (c["collateral_ratio"] < 0.3)
        return {
            "cure": _sigmoid(cure),
            "settle": _sigmoid(settle),
            "write_off": _sigmoid(wo),
            "pay": _sigmoid(pay),
        }

    @property
    def loan_ids(self) -> list[str]:
        """The loans' ids (``SIM<seed>-<n>``): what arm assignment hashes and the log keys."""
        return [f"SIM{self.seed}-{i:07d}" for i in range(len(self.z))]

    # --- choosers -------------------------------------------------------------------------
    def income_reports(self) -> np.ndarray:
        """The income each loan's lender was told before the entry decision (NaN: none), as a
        LoanEvent v4 ``CollectionAttempt.income_report`` (BORROWER_DISCLOSURE) carries it.

        A lender learns of an income shock when the borrower discloses the hardship in a
        collections conversation: each of a shocked borrower's ``prior_attempts`` contacts
        (made before entry) is such a disclosure with p = :data:`DISCLOSURE_RATE`, so a loan
        is reported with p = ``1 - (1 - DISCLOSURE_RATE) ** prior_attempts`` (0 without any
        contact), and the report is what they now earn, ``monthly_income x income_ratio``.
        Unshocked borrowers have no hardship to disclose: nothing is reported (their stream
        income ratio stays 1.0 where the truth is 0.85-1.1). Nothing the stream could not
        know: the report depends on the shock (what is told) and on contacts the stream has
        seen, never on the latent risk or the future. Drawn from the seed's fourth stream, so
        the borrowers, shocks and logging policy's draws are those of a book without it."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed).spawn(4)[3])
        u = rng.random(len(self.z))
        c = self.col
        shocked = c["income_ratio"] < 0.75  # the effect model's shock (_effects)
        told = shocked & (u < 1.0 - (1.0 - DISCLOSURE_RATE) ** c["prior_attempts"])
        return np.where(told, c["monthly_income"] * c["income_ratio"], np.nan)

    def table_choice(self) -> Choice:
        """The static tier x segment table (``policy.matrix``), deterministic."""
        chosen = [
            STRATEGIES.index(self.policy.matrix[t][s])
            for t, s in zip(self.tier, self.segment, strict=True)
        ]
        return Choice(np.array(chosen, dtype=np.int64), np.ones(len(chosen)))

    def random_choice(self) -> Choice:
        """The randomised logging policy: uniform among the tier's allowed strategies, drawn
        from the seed's third stream; the propensity is 1 / (number allowed)."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed).spawn(3)[2])
        u = rng.random(len(self.z))
        counts = self.allowed.sum(axis=1)
        pick = np.minimum((u * counts).astype(np.int64), counts - 1)
        ranks = np.cumsum(self.allowed, axis=1) - 1
        strategy = np.argmax(self.allowed & (ranks == pick[:, None]), axis=1)
        return Choice(strategy.astype(np.int64), 1.0 / counts)

    def greedy_choice(self, values: np.ndarray) -> Choice:
        """Argmax of ``values`` (loans x strategies) among the allowed strategies."""
        masked = np.where(self.allowed, values, -np.inf)
        return Choice(np.argmax(masked, axis=1).astype(np.int64), np.ones(len(self.z)))

    def oracle_values(self) -> np.ndarray:
        """The true expected net recovery (loans x strategies) of each strategy over the
        horizon, computed exactly from the effect model (not from the book's own shocks): what
        an oracle that knows the effects, but not the future, acts on.

        A loan's monthly probabilities are constant within its episode, so its state is (open,
        number of installments paid); the expectation is a forward pass over that count with
        the same month rules as the simulation (``test_strategy_simulator`` checks it against
        the mean of simulated paths)."""
        n, horizon = len(self.z), self.horizon
        rows = np.arange(n)
        values = np.zeros((n, len(STRATEGIES)))
        paid = np.arange(horizon + 1)
        balance = np.maximum(self.col["balance"][:, None] - paid * self.col["emi"][:, None], 0.0)
        alive = balance > 1e-9
        collateral_value = self.col["collateral_ratio"] * self.col["balance"]
        for k, name in enumerate(STRATEGIES):
            p = {key: value[k, rows][:, None] for key, value in self._probabilities.items()}
            cure, settle, wo = self._exits(p["cure"], p["settle"], p["write_off"])
            stay = 1.0 - cure - settle - wo
            if name == "LEGAL_NOTICE":
                lump = np.minimum(balance, 0.85 * collateral_value[:, None])
            else:
                lump = (0.55 if name == "SETTLEMENT_OFFER" else 0.70) * balance
            amount = (
                cure * balance
                + settle * lump
                + stay * p["pay"] * np.minimum(self.col["emi"][:, None], balance)
            )
            cost = self.policy.costs[name]
            mass = np.zeros((n, horizon + 1))
            mass[:, 0] = alive[:, 0]
            total = np.zeros(n)
            for _ in range(horizon):
                total += (mass * ((1 - cost.fee_rate) * amount - cost.per_month)).sum(axis=1)
                moved = mass * stay * p["pay"]
                mass = mass * stay * (1 - p["pay"])
                mass[:, 1:] += moved[:, :-1]
                mass *= alive
            values[:, k] = total
        return values

    @staticmethod
    def _exits(
        cure: np.ndarray, settle: np.ndarray, wo: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The monthly exit probabilities, scaled so that exits share at most 90% a month."""
        total = cure + settle + wo
        scale = np.where(total > 0.9, 0.9 / total, 1.0)
        return cure * scale, settle * scale, wo * scale

    # --- the monthly loop -----------------------------------------------------------------
    def run(self, choice: Choice) -> Outcome:
        """Play the book's own shocks under ``choice``."""
        return self._simulate(choice, self.uniforms)

    def _simulate(self, choice: Choice, uniforms: np.ndarray) -> Outcome:
        n = len(self.z)
        rows = np.arange(n)
        a = choice.strategy
        p = {key: value[a, rows] for key, value in self._probabilities.items()}
        cure, settle, wo = self._exits(p["cure"], p["settle"], p["write_off"])
        cure_cut = cure
        settle_cut = cure_cut + settle
        wo_cut = settle_cut + wo
        legal = a == STRATEGIES.index("LEGAL_NOTICE")
        offer = a == STRATEGIES.index("SETTLEMENT_OFFER")
        collateral_value = self.col["collateral_ratio"] * self.col["balance"]
        per_month = np.array([self.policy.costs[s].per_month for s in STRATEGIES])[a]
        fee_rate = np.array([self.policy.costs[s].fee_rate for s in STRATEGIES])[a]
        balance = self.col["balance"].copy()
        emi = self.col["emi"]
        open_ = np.ones(n, dtype=bool)
        recovered = np.zeros(n)
        cost = np.zeros(n)
        written_off = np.zeros(n, dtype=bool)
        months_open = np.zeros(n, dtype=np.int64)
        for month in range(uniforms.shape[1]):
            u_exit, u_pay = uniforms[:, month, 0], uniforms[:, month, 1]
            cost += np.where(open_, per_month, 0.0)
            months_open += open_
            cured = open_ & (u_exit < cure_cut)
            settled = open_ & ~cured & (u_exit < settle_cut)
            wrote = open_ & ~cured & ~settled & (u_exit < wo_cut)
            paid = open_ & ~cured & ~settled & ~wrote & (u_pay < p["pay"])
            amount = np.where(cured, balance, 0.0)
            lump = np.where(
                legal,
                np.minimum(balance, 0.85 * collateral_value),
                np.where(offer, 0.55, 0.70) * balance,
            )
            amount += np.where(settled, lump, 0.0)
            amount += np.where(paid, np.minimum(emi, balance), 0.0)
            recovered += amount
            cost += fee_rate * amount
            balance = np.where(paid, balance - np.minimum(emi, balance), balance)
            written_off |= wrote
            open_ &= ~(cured | settled | wrote | (balance <= 1e-9))
        return Outcome(choice, recovered, cost, written_off, months_open)


Chooser = Callable[[Book], Choice]
