"""What each recovery strategy costs: the ``costs:`` section of the policy file (issue 14 point 2).

Per strategy, ``per_month`` is the bank's cost of keeping a loan on it for a month (letters,
agent time, court fees) and ``fee_rate`` the share of what is recovered while on it that goes
to someone else (a collection agency's contingency fee, a lawyer's share). Net recovery of a
month = recovered - per_month - fee_rate * recovered. The shipped numbers are illustrative
(docs/STRATEGY.md says where they come from); a bank replaces them with its own.

>>> costs = parse_costs({"CALL": {"per_month": 12, "fee_rate": 0}}, {"CALL"}, "p.yaml")
>>> costs["CALL"].net(100.0)
88.0
>>> parse_costs({"CALL": {"per_month": -1, "fee_rate": 0}}, {"CALL"}, "p.yaml")
Traceback (most recent call last):
...
models.serving.costs.CostsError: p.yaml: costs.CALL.per_month: -1 must be a number >= 0
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from models.errors import ModelsError


class CostsError(ModelsError, ValueError):
    """An invalid ``costs:`` section; the message names the file and the key."""


@dataclass(frozen=True)
class StrategyCost:
    """One strategy's cost per month and fee rate on what is recovered while on it."""

    per_month: float
    fee_rate: float

    def net(self, recovered: float) -> float:
        """A month's net recovery on this strategy given what was recovered in it."""
        return recovered * (1.0 - self.fee_rate) - self.per_month


def parse_costs(data: Any, strategies: Iterable[str], source: str) -> dict[str, StrategyCost]:
    """Validate a ``costs:`` mapping; every declared strategy needs an entry. None (no section)
    gives ``{}``: the policy still serves the table, only the strategy tools refuse it."""
    if data is None:
        return {}
    names = list(strategies)
    if not isinstance(data, dict):
        raise CostsError(f"{source}: costs: must map each strategy to {{per_month, fee_rate}}")
    costs: dict[str, StrategyCost] = {}
    for name in names:
        spec = data.get(name)
        if not isinstance(spec, dict):
            raise CostsError(f"{source}: costs.{name}: missing; give per_month and fee_rate")
        values = []
        for key, upper in (("per_month", float("inf")), ("fee_rate", 1.0)):
            value = spec.get(key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not 0 <= value < upper or value != value:
                bound = "a number >= 0" if key == "per_month" else "a fraction in [0, 1)"
                raise CostsError(f"{source}: costs.{name}.{key}: {value!r} must be {bound}")
            values.append(float(value))
        costs[name] = StrategyCost(*values)
    if extra := sorted(set(data) - set(names)):
        raise CostsError(f"{source}: costs: unknown strategy {extra}; declare it under strategies")
    return costs
