"""Champion / challenger arms (issue 14 point 5, offline half): the ``experiment:`` section of
the policy file and the stable assignment of loans to arms.

A loan's arm comes from ``u = sha256(experiment id + ":" + loan id)`` read as a number in
[0, 1): arms own consecutive bands of ``u`` in the order the file lists them, of width equal
to their share. So assignment is stable across restarts and instances, and independent between
experiments (the id is hashed in). **Changing shares moves only the loans it must** when the
boundary that moves is the only one: with champion 80% / challenger 20% -> 70% / 30% exactly
the loans with ``u`` in [0.70, 0.80) move, 10% of the book. (With three or more arms, resizing
one shifts the bands after it; add new arms at the end.)

``epsilon`` explores inside an arm **per episode** (:func:`episode_key`): a loan's history
splits into delinquency spells (from a missed installment until a payment cures it) and the
performing stretches between them, each named by the loan's own counters, so the key needs no
state of its own. The episode's draw is a function of (experiment id, loan id, episode key)
only -- :meth:`Experiment.explores` (with probability epsilon) and :meth:`Experiment.explored`
(the allowed strategy of smallest per-strategy hash: uniform among any allowed set, and
unchanged while it stays allowed and the set gains no strategy) -- so it is the same at every event
of the episode, in the stream, the batch reference and the simulator alike, and independent
between episodes. The propensity of a strategy ``w`` given the allowed set (``k`` strategies)
and the arm's own pick is ``(1 - epsilon) 1[w = pick] + epsilon / k``.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from models.errors import ModelsError
from models.features.columns import FEATURE_INDEX
from models.strategy.simulator import STRATEGIES

POLICIES = ("table", "learned")
MISSED = FEATURE_INDEX["num_missed"]
CONSECUTIVE = FEATURE_INDEX["consecutive_missed"]


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

    def explores(self, arm: Arm, loan_id: str, episode: str) -> bool:
        """Does the loan's ``episode`` explore in ``arm``? (probability ``arm.epsilon``, the
        same answer at every event of the episode)."""
        return arm.epsilon > 0 and unit_hash(self.id, loan_id, episode, "explore") < arm.epsilon

    def explored(self, loan_id: str, episode: str, options: Sequence[str]) -> str:
        """The strategy an exploring ``episode`` takes among ``options`` (the allowed ones):
        the one of smallest ``unit_hash(id, loan, episode, "pick", strategy)``.

        The hashes are i.i.d. uniforms, so every option is the smallest with probability
        1 / k: uniform, whatever the options. Keyed by the strategy's name, not its position,
        the choice does not move when the allowed set changes around it: it holds while it
        stays allowed unless the set gains a strategy, and when the set grows from k1 to k2
        strategies it holds with probability k1 / k2 -- the most any rule uniform on both sets
        can (the two uniform distributions differ by 1 - k1 / k2 in total variation)."""
        return min(options, key=lambda s: unit_hash(self.id, loan_id, episode, "pick", s))


def episode_key(num_missed: float, consecutive_missed: float) -> str:
    """The loan's episode at an event, from the two counters of its feature row
    (``models.features.columns``; no state of its own, issue 14's 600-byte budget).

    ``num_missed - consecutive_missed`` is the number of misses *before* the current spell:
    constant while the spell lasts (each miss adds one to both), and strictly larger in the
    next one (the cure resets ``consecutive_missed``, after at least one miss). So ``d{n}``
    names the delinquency spell after ``n`` earlier misses, ``p{n}`` the performing stretch
    that follows ``n`` misses (before the first miss: ``p0``). A spell ends where the state
    machine's ``days_past_due`` returns to 0: at any ``PaymentReceived``, partial ones too
    (``LoanState.apply``); a close ends the loan's decisions altogether.

    >>> [episode_key(m, c) for m, c in [(0, 0), (1, 1), (2, 2), (2, 0), (3, 1), (3, 0)]]
    ['p0', 'd0', 'd0', 'p2', 'd2', 'p3']
    """
    before = int(num_missed - consecutive_missed)
    return f"d{before}" if consecutive_missed > 0 else f"p{before}"


def episode_keys(rows: np.ndarray) -> list[str]:
    """:func:`episode_key` of every feature row (``LoanState.features()`` layout)."""
    missed, consecutive = rows[:, MISSED].tolist(), rows[:, CONSECUTIVE].tolist()
    return [episode_key(m, c) for m, c in zip(missed, consecutive, strict=True)]


def experiment_choice(
    loan_ids: list[str],
    episodes: Sequence[str],
    allowed: np.ndarray,
    experiment: Experiment,
    picks: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per loan: the strategy (index into ``STRATEGIES``), its propensity and the arm name,
    given each loan's episode key, each policy's pick (``picks[policy]``, strategy indices) and
    the allowed mask (loans x strategies). The same draw as the stream's
    (``models.strategy.stream``): :meth:`Experiment.explores` and :meth:`Experiment.explored`."""
    n = len(loan_ids)
    strategy = np.zeros(n, dtype=np.int64)
    propensity = np.zeros(n)
    names = np.empty(n, dtype=object)
    for i, (loan, episode) in enumerate(zip(loan_ids, episodes, strict=True)):
        arm = experiment.assign(loan)
        base = int(picks[arm.policy][i])
        options = [STRATEGIES[j] for j in np.flatnonzero(allowed[i])]
        chosen = base
        if experiment.explores(arm, loan, episode):
            chosen = STRATEGIES.index(experiment.explored(loan, episode, options))
        strategy[i] = chosen
        propensity[i] = (1 - arm.epsilon) * (chosen == base) + arm.epsilon / len(options)
        names[i] = arm.name
    return strategy, propensity, names.astype(str)
