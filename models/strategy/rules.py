"""Which strategies a policy may choose in each tier: the seed table's bounds (issue 14 point 4).

Until the guardrails issue adds the legal limits, a strategy is allowed in a tier when it is no
more aggressive (by ``priority``) than the most aggressive strategy the tier's matrix row uses:
with the shipped policy LEGAL_NOTICE and DEBT_COLLECTOR only for HIGH, settlement offers and
repayment plans up to MODERATE, reminders and calls for LOW. The table, the randomised logging
policy, the learned policy and the oracle are all bound by the same mask, so they are compared
on the same choice set.

>>> from models.serving.policy import Policy
>>> allowed = allowed_strategies(Policy.load(None))
>>> sorted(allowed["LOW"])
['AUTOMATED_REMINDER', 'CALL']
>>> "LEGAL_NOTICE" in allowed["MODERATE"], "LEGAL_NOTICE" in allowed["HIGH"]
(False, True)
"""

from __future__ import annotations

from models.serving.policy import TIERS, Policy


def choosable(policy: Policy) -> dict[str, int]:
    """strategy -> priority, for the strategies a policy may choose: all but the guardrails'
    hold strategy (HOLD), which only an active compliance hold imposes (models.serving.guardrails).
    """
    hold = policy.guardrails.hold if policy.guardrails is not None else None
    return {s: p for s, p in policy.priorities.items() if s != hold}


def allowed_strategies(policy: Policy) -> dict[str, tuple[str, ...]]:
    """tier -> the strategies (gentlest first) a policy may pick for a loan in it."""
    allowed: dict[str, tuple[str, ...]] = {}
    for tier in TIERS:
        ceiling = max(policy.priorities[s] for s in policy.matrix[tier].values())
        chosen = [s for s, p in choosable(policy).items() if p <= ceiling]
        allowed[tier] = tuple(sorted(chosen, key=lambda s: (policy.priorities[s], s)))
    return allowed
