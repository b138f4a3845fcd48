"""Champion / challenger arms (issue 14 point 5, offline half): the ``experiment:`` section of
the policy file and the stable assignment of loans to arms.

A loan's arm comes from ``u = sha256(experiment id + ":" + loan id)`` read as a number in
[0, 1): arms own consecutive bands of ``u`` in the order the file lists them, of width equal
to their share. So assignment is stable across restarts and instances, and independent between
experiments (the id is hashed in). **Changing shares moves only the loans it must** when the
boundary that moves is the only one: with champion 80% / challenger 20% -> 70% / 30% exactly
the loans with ``u`` in [0.70, 0.80) move, 10% of the book. (With three or more arms, resizing
one shifts the bands after it; add new arms at the end.) ``epsilon`` explores inside an arm: a
second hash of the loan picks, with probability epsilon, a strategy uniformly among the allowed
ones; the logged propensity of the chosen strategy is then
``(1 - epsilon) 1[chosen = arm's choice] + epsilon / k``.

>>> experiment = Experiment.from_dict(
...     {"id": "exp-1", "arms": [
...         {"name": "champion", "policy": "table", "share": 0.8},
...         {"name": "challenger", "policy": "learned", "share": 0.2, "epsilon": 0.1}]},
...     "p.yaml")
>>> sorted({experiment.assign(f"L{i}").name for i in range(100)})
['challenger', 'champion']
>>> experiment.assign("L1") == experiment.assign("L1")
True
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from models.errors import ModelsError

POLICIES = ("table", "learned")


class ExperimentError(ModelsError, ValueError):
    """An invalid ``experiment:`` section; the message names the file and the key."""


def unit_hash(*parts: str) -> float:
    """A stable number in [0, 1) from ``parts`` (SHA-256, first 8 bytes)."""
    digest = hashlib.sha256(":".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True)
class Arm:
    name: str
    policy: str  # one of POLICIES
    share: float
    epsilon: float = 0.0


@dataclass(frozen=True)
class Experiment:
    """An experiment: its id and arms (bands of the loan hash, in order)."""

    id: str
    arms: tuple[Arm, ...]

    @classmethod
    def load(cls, path: str | Path) -> Experiment | None:
        """The ``experiment:`` section of a policy file, or None when it has none."""
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        section = data.get("experiment") if isinstance(data, dict) else None
        return None if section is None else cls.from_dict(section, str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str) -> Experiment:
        def fail(key: str, problem: str) -> ExperimentError:
            return ExperimentError(f"{source}: experiment{key}: {problem}")

        if not isinstance(data, dict) or not str(data.get("id") or "").strip():
            raise fail("", "must be a mapping with a non-empty id and a list of arms")
        raw = data.get("arms")
        if not isinstance(raw, list) or not raw:
            raise fail(".arms", "must list the arms: {name, policy, share[, epsilon]}")
        arms: list[Arm] = []
        for i, spec in enumerate(raw):
            where = f".arms[{i}]"
            if not isinstance(spec, dict) or not str(spec.get("name") or "").strip():
                raise fail(where, "needs a name")
            if spec.get("policy") not in POLICIES:
                raise fail(f"{where}.policy", f"{spec.get('policy')!r}; use one of {POLICIES}")
            for key, default in (("share", None), ("epsilon", 0.0)):
                value = spec.get(key, default)
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                if not ok or not 0 <= value <= 1:
                    raise fail(f"{where}.{key}", f"{value!r} must be a number in [0, 1]")
            arms.append(
                Arm(
                    str(spec["name"]),
                    spec["policy"],
                    float(spec["share"]),
                    float(spec.get("epsilon", 0.0)),
                )
            )
        if len({a.name for a in arms}) != len(arms):
            raise fail(".arms", "arm names must be unique")
        total = sum(a.share for a in arms)
        if abs(total - 1.0) > 1e-9:
            raise fail(".arms", f"shares add up to {total:g}; they must add up to 1")
        return cls(str(data["id"]).strip(), tuple(arms))

    def assign(self, loan_id: str) -> Arm:
        """The loan's arm: the band of ``unit_hash(id, loan_id)`` it falls in."""
        u = unit_hash(self.id, loan_id)
        edge = 0.0
        for arm in self.arms:
            edge += arm.share
            if u < edge:
                return arm
        return self.arms[-1]

    def exploration(self, loan_id: str) -> tuple[float, float]:
        """Two stable uniforms for ε-exploration: (explore?, which strategy)."""
        return unit_hash(self.id, loan_id, "explore"), unit_hash(self.id, loan_id, "pick")


def experiment_choice(
    loan_ids: list[str], allowed: np.ndarray, experiment: Experiment, picks: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per loan: the strategy (index), its propensity and the arm name, given each policy's
    pick (``picks[policy]``, strategy indices) and the allowed mask (loans x strategies)."""
    n = len(loan_ids)
    strategy = np.zeros(n, dtype=np.int64)
    propensity = np.zeros(n)
    names = np.empty(n, dtype=object)
    for i, loan in enumerate(loan_ids):
        arm = experiment.assign(loan)
        base = int(picks[arm.policy][i])
        options = np.flatnonzero(allowed[i])
        explore, pick = experiment.exploration(loan)
        chosen = int(options[int(pick * len(options))]) if explore < arm.epsilon else base
        strategy[i] = chosen
        propensity[i] = (1 - arm.epsilon) * (chosen == base) + arm.epsilon / len(options)
        names[i] = arm.name
    return strategy, propensity, names.astype(str)
