"""The recovery-strategy policy: tier x segment -> strategy, with hysteresis against flapping.

The policy is a versioned YAML file (the shipped default is ``models/serving/default_policy.yaml``,
whose comments document every key). It is validated on load; :class:`PolicyError` says which
key is wrong and how to fix it.

>>> policy = Policy.load(None)
>>> policy.decide("HIGH", "HIGH_RISK", 0.9, None)
'LEGAL_NOTICE'
>>> policy.decide("HIGH", "OTHERS", 0.76, "REPAYMENT_PLAN")  # 0.76 is within 0.03 of 0.75
'REPAYMENT_PLAN'
>>> policy.decide("HIGH", "OTHERS", 0.80, "REPAYMENT_PLAN")
'DEBT_COLLECTOR'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.errors import ModelsError
from models.serving.costs import StrategyCost, parse_costs
from models.serving.guardrails import GuardrailConfig, GuardrailError, Guardrails

DEFAULT_POLICY = Path(__file__).with_name("default_policy.yaml")
TIERS = ("HIGH", "MODERATE", "LOW")
SEGMENTS = ("HIGH_RISK", "OTHERS", "LOW_RISK")
REQUIRED_STRATEGIES = (
    "LEGAL_NOTICE",
    "DEBT_COLLECTOR",
    "SETTLEMENT_OFFER",
    "CALL",
    "AUTOMATED_REMINDER",
)


class PolicyError(ModelsError, ValueError):
    """An invalid policy file; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Policy:
    """A validated policy. Use :meth:`load`."""

    version: str
    high: float
    moderate: float
    hysteresis: float
    priorities: dict[str, int]
    matrix: dict[str, dict[str, str]]
    path: str = ""
    costs: dict[str, StrategyCost] = field(default_factory=dict)  # models.serving.costs
    # The layer every choice passes through (models.serving.guardrails); the processor applies
    # it to whatever policy decided, so a learned policy or an arm carries one too.
    guardrails: Guardrails | None = None

    @classmethod
    def load(cls, path: str | Path | None = None) -> Policy:
        """Load and validate ``path`` (None: the shipped default)."""
        path = Path(path) if path is not None else DEFAULT_POLICY
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise PolicyError(f"{path}: cannot read the policy ({error.strerror})") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise PolicyError(f"{path}: not valid YAML{where}; fix the syntax") from None
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        return cls.from_dict(data, source=str(path), digest=digest)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<policy>", digest: str = "") -> Policy:
        """Validate a parsed policy document."""

        def fail(key: str, problem: str) -> PolicyError:
            return PolicyError(f"{source}: {key}: {problem}")

        if not isinstance(data, dict):
            raise fail(
                "(top level)",
                "must be a mapping with version, thresholds, hysteresis, strategies and matrix",
            )
        for key in ("version", "thresholds", "hysteresis", "strategies", "matrix"):
            if key not in data:
                raise fail(key, "missing; see models/serving/default_policy.yaml")
        version = str(data["version"]).strip()
        if not version:
            raise fail("version", "must not be empty; bump it whenever the policy changes")
        thresholds = data["thresholds"]
        if not isinstance(thresholds, dict) or set(thresholds) != {"high", "moderate"}:
            raise fail("thresholds", "must have exactly the keys high and moderate")
        high, moderate = thresholds["high"], thresholds["moderate"]
        for name, value in (("high", high), ("moderate", moderate)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
                raise fail(f"thresholds.{name}", f"{value!r} must be a probability in (0, 1)")
        if not moderate < high:
            raise fail("thresholds", f"moderate ({moderate}) must be below high ({high})")
        margin = data["hysteresis"]
        if (
            not isinstance(margin, (int, float))
            or isinstance(margin, bool)
            or not (0 <= margin < (high - moderate) / 2 and margin < moderate and margin < 1 - high)
        ):
            raise fail(
                "hysteresis",
                f"{margin!r} must be >= 0 and less than half the gap between the thresholds",
            )
        strategies = data["strategies"]
        if not isinstance(strategies, dict) or not strategies:
            raise fail("strategies", "must map each strategy name to {priority: N}")
        raw_guardrails = data.get("guardrails")
        hold = (raw_guardrails or {}).get("hold_strategy", GuardrailConfig.hold_strategy)
        priorities: dict[str, int] = {}
        for name, spec in strategies.items():
            priority = spec.get("priority") if isinstance(spec, dict) else None
            lowest = 0 if name == hold else 1  # the hold is outside the priority order
            if not isinstance(priority, int) or isinstance(priority, bool) or priority < lowest:
                raise fail(
                    f"strategies.{name}.priority", f"{priority!r} must be an integer >= {lowest}"
                )
            priorities[str(name)] = priority
        if hold not in priorities:
            raise fail("strategies", f"missing {hold} (the guardrails' hold strategy)")
        if missing := [s for s in REQUIRED_STRATEGIES if s not in priorities]:
            raise fail("strategies", f"missing {', '.join(missing)} (required strategies)")
        matrix = data["matrix"]
        if not isinstance(matrix, dict):
            raise fail("matrix", "must map each tier to {segment: strategy}")
        clean: dict[str, dict[str, str]] = {}
        for tier in TIERS:
            row = matrix.get(tier)
            if not isinstance(row, dict):
                raise fail(f"matrix.{tier}", f"missing; give a strategy for {', '.join(SEGMENTS)}")
            clean[tier] = {}
            for segment in SEGMENTS:
                strategy = row.get(segment)
                if strategy is None:
                    raise fail(f"matrix.{tier}.{segment}", "missing strategy")
                if strategy not in priorities:
                    raise fail(
                        f"matrix.{tier}.{segment}",
                        f"unknown strategy {strategy!r}; declare it under strategies",
                    )
                if strategy == hold:
                    raise fail(f"matrix.{tier}.{segment}", f"{hold} is set by guardrails only")
                clean[tier][segment] = strategy
            if extra := set(row) - set(SEGMENTS):
                raise fail(
                    f"matrix.{tier}",
                    f"unknown segment(s) {sorted(extra)}; use {', '.join(SEGMENTS)}",
                )
        if extra := set(matrix) - set(TIERS):
            raise fail("matrix", f"unknown tier(s) {sorted(extra)}; use {', '.join(TIERS)}")
        try:
            config = GuardrailConfig.from_dict(raw_guardrails, source, priorities)
        except GuardrailError as error:
            raise PolicyError(str(error)) from None
        full_version = f"{version}+{digest}" if digest else version
        costs = parse_costs(data.get("costs"), priorities, source)
        return cls(
            full_version,
            float(high),
            float(moderate),
            float(margin),
            priorities,
            clean,
            source,
            costs,
            Guardrails(config, priorities),
        )

    def tier(self, score: float) -> str:
        """HIGH (> high), MODERATE (> moderate) or LOW."""
        if score > self.high:
            return "HIGH"
        if score > self.moderate:
            return "MODERATE"
        return "LOW"

    def decide(self, tier: str, segment: str, score: float, current_strategy: str | None) -> str:
        """The strategy for a loan now.

        ``matrix[tier][segment]``, except that within ``hysteresis`` of a threshold the loan
        keeps ``current_strategy`` when either tier next to that threshold would give it.
        """
        wanted = self.matrix[tier][segment]
        if current_strategy is None or current_strategy == wanted or self.hysteresis == 0:
            return wanted
        row = self.matrix
        if abs(score - self.high) <= self.hysteresis and current_strategy in (
            row["HIGH"][segment],
            row["MODERATE"][segment],
        ):
            return current_strategy
        if abs(score - self.moderate) <= self.hysteresis and current_strategy in (
            row["MODERATE"][segment],
            row["LOW"][segment],
        ):
            return current_strategy
        return wanted

    def rule(self, tier: str, segment: str, score: float, current_strategy: str | None) -> str:
        """Which rule of :meth:`decide` (same arguments) chose its strategy, for the emitted
        record's ``policy_rule``: ``table: HIGH x HIGH_RISK`` or ``hysteresis: kept CALL
        within 0.03 of high 0.75``. Separate from ``decide`` so the per-event path builds no
        string; only emitted decisions ask.

        >>> Policy.load(None).rule("HIGH", "OTHERS", 0.76, "REPAYMENT_PLAN")
        'hysteresis: kept REPAYMENT_PLAN within 0.03 of high 0.75'
        """
        chosen = self.decide(tier, segment, score, current_strategy)
        if chosen == self.matrix[tier][segment]:
            return f"table: {tier} x {segment}"
        name, value = (
            ("high", self.high)
            if abs(score - self.high) <= self.hysteresis
            else ("moderate", self.moderate)
        )
        return f"hysteresis: kept {chosen} within {self.hysteresis:g} of {name} {value:g}"

    def is_escalation(self, old: str | None, new: str) -> bool:
        """Does ``new`` rank above ``old`` (by priority)?"""
        return old is None or self.priorities.get(new, 0) > self.priorities.get(old, 0)

    def to_dict(self) -> dict[str, Any]:
        thresholds = {"high": self.high, "moderate": self.moderate}
        return {
            "version": self.version,
            "thresholds": thresholds,
            "hysteresis": self.hysteresis,
            "priorities": self.priorities,
            "matrix": self.matrix,
            "guardrails": vars(self.guardrails.config) if self.guardrails else None,
        }
