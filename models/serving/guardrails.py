"""The guardrail layer every policy's choice passes through (ARCHITECTURE.md §7).

``Guardrails.apply(state, wanted, at) -> GuardDecision(strategy, interventions,
next_contact_not_before, hold_reason)``: whatever chose ``wanted`` -- the table policy, a
learned policy, an experiment arm -- the processor hands it to this one function, so no policy
can cross these rules (US defaults, configurable under ``guardrails:`` in the policy file,
``models/serving/default_policy.yaml``):

1. **Compliance hold** -> ``HOLD`` (no contact at all) while any hold is active, its reason in
   ``hold_reason``: cease communication (12 CFR 1006.6(c)), attorney represented
   (1006.6(b)(2)), bankruptcy (the automatic stay, 11 U.S.C. 362), dispute (1006.34; no
   collection until verified), deceased.
2. **Escalation ladder**: a strategy drops at most one priority level per
   ``ladder.days_per_level`` days unless the loan cures (days past due back to 0); escalations
   are never held back. ``HOLD`` is outside the ladder.
3. **Legal action**: ``legal.strategy`` (LEGAL_NOTICE) never on time-barred debt -- the last
   payment (or the opening, for a loan that never paid) older than the limitation period of the
   loan's jurisdiction (1006.26(b); FDCPA 15 U.S.C. 1692e(5)) -- nor below
   ``legal.min_days_past_due``; it becomes ``legal.fallback``. Compliance beats the ladder:
   this may drop a strategy faster than rule 2 allows. The period is
   ``legal.limitation_periods_days[code]`` for the loan's ``LoanOpened.jurisdiction`` (e.g.
   ``US-CA``), else that of its country (``US``), else ``legal.limitation_period_days`` (the
   default, also for a loan without a jurisdiction): an unlisted jurisdiction falls back, it
   is not refused (a malformed code is dead-lettered when the loan opens,
   ``invalid_jurisdiction``), so the default must be the shortest period the bank collects
   under -- the shipped table's shortest, 3 years.
4. **Next contact**: every strategy but ``HOLD`` carries ``next_contact_not_before``, the
   earliest instant >= the event time at which a call respects all of: at most 7 call attempts
   in 7 consecutive days and none within 7 days after a conversation (1006.14(b)(2)), and the
   borrower's local 08:00-21:00 (1006.6(b)(1)); a borrower without a known time zone is
   treated as UTC.

Rules 1-3 change the strategy and say so in ``interventions`` (rule, wanted strategy,
detail); rule 4 only annotates. ``choose`` (rules 1-3) runs for every event;
``next_contact_not_before`` is computed only for decisions that are emitted (the hot path).

The processor applies a whole batch before it decides, so it hands ``choose_at`` the loan's
facts as they were right after each event (``Facts``: a copy of its guard, its last payment,
its days past due); only the ladder's clock (``strategy_since``, written by :meth:`record` as
decisions are made, in order) is read from the live state.
"""

from __future__ import annotations

import itertools
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from functools import cache
from typing import Any, ClassVar, NamedTuple

from models.errors import ModelsError
from models.features.guard_state import CALL_HISTORY, JURISDICTION, STRATEGY_SINCE, GuardState
from models.features.state import DAY_MS, DPD, LAST_PAYMENT_AT, OPENED_AT, LoanState

HOUR_MS = 3_600_000
WEEK_MS = 7 * DAY_MS
COMPLIANCE_HOLD = "compliance_hold"
ESCALATION_LADDER = "escalation_ladder"
TIME_BARRED = "time_barred"
LEGAL_MIN_DPD = "legal_min_days_past_due"
RULES = (COMPLIANCE_HOLD, ESCALATION_LADDER, TIME_BARRED, LEGAL_MIN_DPD)


class GuardrailError(ModelsError, ValueError):
    """An invalid ``guardrails:`` section; the message names the key and the fix."""


@dataclass(frozen=True, slots=True)
class Intervention:
    """A guardrail changed the policy's choice: which rule, what the policy wanted, why."""

    rule: str
    wanted_strategy: str
    detail: str


class Facts(NamedTuple):
    """A loan's guardrail facts right after one event (see the module docstring)."""

    guard: GuardState | None
    last_payment_at: float  # epoch ms, NaN: never paid
    days_past_due: float


class GuardDecision(NamedTuple):
    strategy: str
    interventions: tuple[Intervention, ...]
    next_contact_not_before: int | None
    hold_reason: str | None


@dataclass(frozen=True)
class GuardrailConfig:
    """The ``guardrails:`` section (every key optional; these are the documented defaults)."""

    hold_strategy: str = "HOLD"
    legal_strategy: str = "LEGAL_NOTICE"
    legal_fallback: str = "DEBT_COLLECTOR"
    limitation_period_days: int = 3 * 365  # the shortest common US state period: conservative
    legal_min_days_past_due: int = 90
    max_calls_in_7_days: int = 7
    cool_off_days: int = 7
    window_start_hour: int = 8
    window_end_hour: int = 21
    ladder_days_per_level: int = 30
    # jurisdiction code -> days; none by default (every loan gets limitation_period_days).
    limitation_periods_days: dict[str, int] = field(default_factory=dict, hash=False)

    _KEYS: ClassVar[dict[str, tuple[str, ...]]] = {
        "hold_strategy": ("hold_strategy",),
        "legal_strategy": ("legal", "strategy"),
        "legal_fallback": ("legal", "fallback"),
        "limitation_period_days": ("legal", "limitation_period_days"),
        "limitation_periods_days": ("legal", "limitation_periods_days"),
        "legal_min_days_past_due": ("legal", "min_days_past_due"),
        "max_calls_in_7_days": ("contact", "max_call_attempts_in_7_days"),
        "cool_off_days": ("contact", "cool_off_days_after_conversation"),
        "window_start_hour": ("contact", "window_start_hour"),
        "window_end_hour": ("contact", "window_end_hour"),
        "ladder_days_per_level": ("ladder", "days_per_level"),
    }

    @classmethod
    def from_dict(cls, data: Any, source: str, strategies: dict[str, int]) -> GuardrailConfig:
        """Validate a parsed ``guardrails:`` section against the policy's strategies."""

        def fail(key: str, problem: str) -> GuardrailError:
            return GuardrailError(f"{source}: guardrails.{key}: {problem}")

        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise fail("(section)", "must be a mapping; see models/serving/default_policy.yaml")
        known_sections = {path[0] for path in cls._KEYS.values()}
        if extra := set(data) - known_sections:
            raise fail(sorted(extra)[0], f"unknown key; use {', '.join(sorted(known_sections))}")
        values: dict[str, Any] = {}
        for field_name, path in cls._KEYS.items():
            node: Any = data
            for part in path[:-1]:
                node = node.get(part, {})
                if not isinstance(node, dict):
                    raise fail(part, "must be a mapping")
            if path[-1] in node:
                values[field_name] = node[path[-1]]
        config = cls(**values)
        for field_name, path in cls._KEYS.items():
            value = getattr(config, field_name)
            key = ".".join(path)
            if field_name == "limitation_periods_days":
                cls._check_periods(value, key, fail)
            elif field_name.endswith(("strategy", "fallback")):
                if value not in strategies:
                    raise fail(key, f"unknown strategy {value!r}; declare it under strategies")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise fail(key, f"{value!r} must be an integer >= 0")
        if config.legal_fallback in (config.legal_strategy, config.hold_strategy):
            raise fail("legal.fallback", "must be neither the legal strategy nor the hold")
        if not 1 <= config.max_calls_in_7_days <= CALL_HISTORY:
            raise fail(
                "contact.max_call_attempts_in_7_days",
                f"{config.max_calls_in_7_days} must be 1..{CALL_HISTORY} (Reg F 1006.14(b)(2))",
            )
        if not 0 <= config.window_start_hour < config.window_end_hour <= 24:
            raise fail("contact", "window_start_hour < window_end_hour, both within 0..24")
        return config

    @staticmethod
    def _check_periods(
        periods: object, key: str, fail: Callable[[str, str], GuardrailError]
    ) -> None:
        if not isinstance(periods, dict):
            raise fail(key, "must be a mapping of jurisdiction code to days, e.g. US-CA: 1460")
        for code, days in periods.items():
            if not isinstance(code, str) or not JURISDICTION.fullmatch(code):
                raise fail(
                    f"{key}.{code}",
                    "not a jurisdiction code: ISO 3166-1 alpha-2 country, optionally '-' and "
                    "an ISO 3166-2 subdivision, upper case (US, US-CA)",
                )
            if not isinstance(days, int) or isinstance(days, bool) or days < 0:
                raise fail(f"{key}.{code}", f"{days!r} must be an integer >= 0 (days)")

    def limitation_days(self, jurisdiction: str | None) -> tuple[int, str]:
        """(days, which entry gave them) for a loan of ``jurisdiction``: its own entry, its
        country's, or the default (the module docstring, rule 3)."""
        if jurisdiction is not None:
            for code in (jurisdiction, jurisdiction.partition("-")[0]):
                days = self.limitation_periods_days.get(code)
                if days is not None:
                    return days, code
        return self.limitation_period_days, "default"


@cache
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


class Guardrails:
    """The rules of the module docstring over a policy's strategy priorities."""

    def __init__(self, config: GuardrailConfig, priorities: dict[str, int]) -> None:
        self.config = config
        self.priorities = priorities
        self.hold = config.hold_strategy
        self.legal = config.legal_strategy
        ranked = sorted({p for s, p in priorities.items() if s != self.hold})
        self._lowest = ranked[0]
        # The strategy one level below each priority (ties: the first by name).
        self._below: dict[int, tuple[int, str]] = {}
        for lower, upper in itertools.pairwise(ranked):
            names = sorted(s for s, p in priorities.items() if p == lower and s != self.hold)
            self._below[upper] = (lower, names[0])
        self._ladder_ms = config.ladder_days_per_level * DAY_MS
        # Jurisdictions are few (a book has dozens): their lookups are cached per instance.
        self._limitation = cache(config.limitation_days)

    # -- rules 1-3: the strategy --------------------------------------------------------------
    def choose(
        self, state: LoanState, wanted: str, at: int
    ) -> tuple[str, tuple[Intervention, ...], str | None]:
        """(strategy, interventions, hold reason) for a policy that wants ``wanted`` at
        ``at`` (the event time, epoch ms); ``state`` is the loan after the event, its
        ``strategy`` still the previous decision."""
        return self.choose_at(state, wanted, at, self.facts(state))

    @staticmethod
    def facts(state: LoanState) -> Facts:
        guard = None if state.guard is None else state.guard.copy()
        return Facts(guard, state[LAST_PAYMENT_AT], state[DPD])

    def choose_at(
        self, state: LoanState, wanted: str, at: int, facts: Facts
    ) -> tuple[str, tuple[Intervention, ...], str | None]:
        """:meth:`choose` with the loan's ``facts`` as of the event."""
        guard = facts.guard
        if guard is not None and guard.any_hold:
            reason = ",".join(guard.holds)
            detail = f"active hold: {reason} (no contact until released)"
            return self.hold, (Intervention(COMPLIANCE_HOLD, wanted, detail),), reason
        strategy, interventions = wanted, ()
        current = state.strategy
        if current is not None and current != self.hold and current != wanted:
            strategy, interventions = self._ladder(state, wanted, current, at, facts)
        if strategy == self.legal:
            barred = self._legal_bar(state, at, facts)
            if barred is not None:
                rule, detail = barred
                fallback = self.config.legal_fallback
                interventions = (*interventions, Intervention(rule, wanted, detail))
                strategy = fallback
        return strategy, interventions, None

    def _ladder(
        self, state: LoanState, wanted: str, current: str, at: int, facts: Facts
    ) -> tuple[str, tuple[Intervention, ...]]:
        top, floor = self.priorities.get(current), self.priorities[wanted]
        if top is None or floor >= top or facts.days_past_due == 0.0:  # (None: older policy)
            return wanted, ()
        guard = state.guard  # the live clock: record() writes it as decisions are made
        since = guard[STRATEGY_SINCE] if guard is not None else float("nan")
        days = self.config.ladder_days_per_level
        if since == since and at - since < self._ladder_ms:
            detail = (
                f"{current} since {(at - since) / DAY_MS:.1f} days; "
                f"one priority level per {days} days until the loan cures"
            )
            return current, (Intervention(ESCALATION_LADDER, wanted, detail),)
        lower, step = self._below[top]
        if floor >= lower:
            return wanted, ()
        detail = f"{current} -> {step}: one priority level per {days} days until the loan cures"
        return step, (Intervention(ESCALATION_LADDER, wanted, detail),)

    def _legal_bar(self, state: LoanState, at: int, facts: Facts) -> tuple[str, str] | None:
        paid = facts.last_payment_at
        since = paid if paid == paid else state[OPENED_AT]
        jurisdiction = None if facts.guard is None else facts.guard.jurisdiction
        days, entry = self._limitation(jurisdiction)
        if at - since > days * DAY_MS:
            what = "last payment" if paid == paid else "opening (never paid)"
            years = (at - since) / DAY_MS / 365
            where = entry if entry == jurisdiction else f"{jurisdiction or 'unknown'} -> {entry}"
            return TIME_BARRED, (
                f"{what} {years:.1f} years ago: past the {days}-day limitation period ({where})"
            )
        dpd = facts.days_past_due
        if dpd < self.config.legal_min_days_past_due:
            return LEGAL_MIN_DPD, f"{dpd:.0f} days past due < {self.config.legal_min_days_past_due}"
        return None

    def record(self, state: LoanState, strategy: str, at: int) -> None:
        """After a decision: start the ladder's clock when the strategy changed to one above
        the gentlest (lower ones cannot drop, and HOLD is outside the ladder), so a loan that
        never escalates allocates no guard. Whether the loan has a guard yet must not matter:
        in a batch it may already hold one from a later event."""
        if strategy != state.strategy and self.priorities.get(strategy, 0) > self._lowest:
            state.ensure_guard()[STRATEGY_SINCE] = float(at)

    # -- rule 4: when ---------------------------------------------------------------------------
    def next_contact_not_before(
        self, guard: GuardState | None, strategy: str, at: int
    ) -> int | None:
        """The earliest contact allowed at or after ``at`` for a loan whose guard (as of the
        event) is ``guard`` (None for ``HOLD``)."""
        if strategy == self.hold:
            return None
        config, t = self.config, at
        zone = None
        if guard is not None:
            conversation = guard.last_conversation_at
            if conversation is not None:
                t = max(t, conversation + config.cool_off_days * DAY_MS)
            calls = guard.call_times
            if len(calls) >= config.max_calls_in_7_days:
                t = max(t, calls[-config.max_calls_in_7_days] + WEEK_MS)
            zone = guard.time_zone
        return self._in_window(t, zone)

    def _in_window(self, t: int, zone: str | None) -> int:
        """``t``, or the next window start if ``t`` is outside the local window."""
        start, end = self.config.window_start_hour, self.config.window_end_hour
        if zone is None:  # UTC: plain arithmetic
            of_day = t % DAY_MS
            if of_day < start * HOUR_MS:
                return t - of_day + start * HOUR_MS
            if of_day >= end * HOUR_MS:
                return t - of_day + DAY_MS + start * HOUR_MS
            return t
        tz = _zone(zone)
        local = datetime.fromtimestamp(t / 1000, tz)
        hour = local.hour + local.minute / 60 + local.second / 3600 + local.microsecond / 3.6e9
        if start <= hour < end:
            return t
        day = local.date() if hour < start else local.date() + timedelta(days=1)
        opening = datetime.combine(day, time(start % 24), tzinfo=tz)
        return max(t, int(opening.timestamp() * 1000))

    # -- the whole layer ------------------------------------------------------------------------
    def apply(self, state: LoanState, wanted: str, at: int) -> GuardDecision:
        """(strategy, interventions, next_contact_not_before, hold_reason) for ``wanted``."""
        facts = self.facts(state)
        strategy, interventions, hold_reason = self.choose_at(state, wanted, at, facts)
        next_contact = self.next_contact_not_before(facts.guard, strategy, at)
        return GuardDecision(strategy, interventions, next_contact, hold_reason)
