"""What the guardrails need to know about a loan, kept only for loans that have any of it.

Most loans of a book never get a call, a hold or a time zone: for them the guardrails need
only ``models.features.state``'s array (its ``last_payment_at`` is the one double every loan
pays for), so a ``LoanState`` carries ``guard = None`` (one pointer; ``bench/state.py``'s
600-byte floor per loan leaves room for no more). A :class:`GuardState` is allocated on a
loan's first call attempt or conversation, hold, borrower time zone, or strategy above the
gentlest (the escalation ladder needs its start time).

Layout (one ``array('d')``, epoch ms, NaN = never):

- ``holds``: bit ``i`` set while hold reason ``HOLD_REASONS[i]`` is active (12 CFR 1006.6(b)(2)
  attorney, 1006.6(c) cease communication; bankruptcy, dispute, deceased); from bit
  ``JURISDICTION_SHIFT`` on, the loan's jurisdiction (``LoanOpened.jurisdiction``, LoanEvent v3)
  packed by :func:`pack_jurisdiction` -- an exact integer below 2**53 in the same double, so it
  costs no byte per loan and rides in the LoanState v3 changelog record unchanged (a loan
  restored from a record written before it has none: the policy's default period);
- ``last_conversation_at``: the latest contact with a conversation (1006.14(b)(2)(i)(B));
- ``strategy_since``: when the loan's current strategy began (the escalation ladder);
- then the times of the loan's last ``CALL_HISTORY`` call attempts, oldest first: under
  1006.14(b)(2)(i)(A) (7 call attempts in 7 consecutive days) only the seventh most recent can
  hold the next call back, so older ones are dropped.

``time_zone`` (IANA name or None) is the borrower's, from ``LoanOpened``.

A loan whose guard holds only what its opening said (time zone, jurisdiction) shares one
instance per (time zone, jurisdiction) -- :func:`opening_guard`: a book where every loan
carries its jurisdiction would otherwise pay ~110 bytes per loan for a private copy of the
same three doubles. ``LoanState.ensure_guard`` copies a shared guard before any write (calls,
holds and the ladder all write through it), so sharing never leaks one loan's facts into
another's.
"""

from __future__ import annotations

import math
import re
from array import array
from typing import Any

HOLD_REASONS: tuple[str, ...] = (
    "CEASE_COMMUNICATION",
    "ATTORNEY_REPRESENTED",
    "BANKRUPTCY",
    "DISPUTE",
    "DECEASED",
)
HOLD_BIT = {reason: 1 << i for i, reason in enumerate(HOLD_REASONS)}
CALL_HISTORY = 7  # Reg F 1006.14(b)(2)(i)(A): 7 attempts within 7 consecutive days
HOLDS, LAST_CONVERSATION, STRATEGY_SINCE = range(3)
CALLS = 3  # first call-attempt time
HOLD_MASK = (1 << len(HOLD_REASONS)) - 1
JURISDICTION_SHIFT = 8  # room for three more hold reasons
# ISO 3166-1 alpha-2 country, optionally "-" and an ISO 3166-2 subdivision (1-3 letters/digits).
JURISDICTION = re.compile(r"[A-Z]{2}(?:-[A-Z0-9]{1,3})?")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"  # subdivision characters: codes 1..36


def pack_jurisdiction(code: str) -> int:
    """``code`` (matching ``JURISDICTION``) as a 28-bit integer: two 5-bit country letters,
    then three 6-bit subdivision characters (0 = none). Raises ``ValueError`` otherwise."""
    if not JURISDICTION.fullmatch(code):
        raise ValueError(f"{code!r} is not a jurisdiction like US or US-CA")
    country, _, subdivision = code.partition("-")
    n = (ord(country[0]) - 65) << 5 | (ord(country[1]) - 65)
    for k in range(3):
        n = n << 6 | (_ALPHABET.index(subdivision[k]) + 1 if k < len(subdivision) else 0)
    return n + 1  # 0: no jurisdiction


def unpack_jurisdiction(n: int) -> str | None:
    if n == 0:
        return None
    n -= 1
    chars = [(n >> shift) & 63 for shift in (12, 6, 0)]
    subdivision = "".join(_ALPHABET[c - 1] for c in chars if c)
    country = chr(65 + (n >> 23)) + chr(65 + ((n >> 18) & 31))
    return f"{country}-{subdivision}" if subdivision else country


_NAN = math.nan
_BLANK = array("d", [0.0, _NAN, _NAN])


class GuardState(array):
    """A loan's guardrail facts (see the module docstring); built empty, filled by
    ``LoanState``'s event bookkeeping and by the escalation ladder."""

    __slots__ = ("time_zone",)

    def __new__(
        cls,
        values: array | None = None,
        time_zone: str | None = None,
        jurisdiction: str | None = None,
    ) -> GuardState:
        guard = super().__new__(cls, "d", _BLANK if values is None else values)
        if len(guard) < CALLS or len(guard) > CALLS + CALL_HISTORY:
            raise ValueError(f"a GuardState has {CALLS} to {CALLS + CALL_HISTORY} values")
        guard.time_zone = time_zone
        if jurisdiction is not None:
            packed = pack_jurisdiction(jurisdiction) << JURISDICTION_SHIFT
            guard[HOLDS] = float(int(guard[HOLDS]) & HOLD_MASK | packed)
        return guard

    def copy(self) -> GuardState:
        return GuardState(self, self.time_zone)

    def note_call(self, at: int) -> None:
        """A call attempt at ``at`` (events arrive in event-time order: the list stays sorted)."""
        if len(self) == CALLS + CALL_HISTORY:
            del self[CALLS]
        self.append(float(at))

    def set_hold(self, reason: str, active: bool) -> None:
        bits = int(self[HOLDS])
        self[HOLDS] = float(bits | HOLD_BIT[reason] if active else bits & ~HOLD_BIT[reason])

    @property
    def any_hold(self) -> bool:
        return bool(int(self[HOLDS]) & HOLD_MASK)

    @property
    def jurisdiction(self) -> str | None:
        """The loan's jurisdiction (``LoanOpened.jurisdiction``), None when not given."""
        return unpack_jurisdiction(int(self[HOLDS]) >> JURISDICTION_SHIFT)

    @property
    def holds(self) -> tuple[str, ...]:
        """The active hold reasons, in ``HOLD_REASONS`` order."""
        bits = int(self[HOLDS])
        return tuple(reason for reason in HOLD_REASONS if bits & HOLD_BIT[reason])

    @property
    def call_times(self) -> list[int]:
        return [int(t) for t in self[CALLS:]]

    @staticmethod
    def _time(value: float) -> int | None:
        return None if value != value else int(value)

    @property
    def last_conversation_at(self) -> int | None:
        return self._time(self[LAST_CONVERSATION])

    @property
    def strategy_since(self) -> int | None:
        return self._time(self[STRATEGY_SINCE])

    def to_record(self) -> dict[str, object]:
        """The ``GuardState`` record of ``LoanState`` v3."""
        return {"values": self.tolist(), "time_zone": self.time_zone}

    @classmethod
    def from_record(cls, record: Any) -> GuardState | None:
        """From the record (or fastavro's ``(name, record)`` union tuple); None stays None."""
        if record is None:
            return None
        if isinstance(record, tuple):
            record = record[1]
        return restored_guard(array("d", record["values"]), record["time_zone"])  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return (
            f"GuardState(holds={self.holds}, calls={len(self) - CALLS}, "
            f"jurisdiction={self.jurisdiction})"
        )


_SHARED: dict[tuple[float, str | None], GuardState] = {}
_MAX_SHARED = 4096  # (time zone, jurisdiction) pairs; beyond, loans simply get their own


def opening_guard(time_zone: str | None, jurisdiction: str | None) -> GuardState:
    """The shared guard of a loan with only its opening facts (see the module docstring)."""
    probe = GuardState(time_zone=time_zone, jurisdiction=jurisdiction)
    key = (probe[HOLDS], time_zone)
    shared = _SHARED.get(key)
    if shared is None:
        if len(_SHARED) >= _MAX_SHARED:
            return probe
        shared = _SHARED[key] = probe
    return shared


def is_shared(guard: GuardState) -> bool:
    return _SHARED.get((guard[HOLDS], guard.time_zone)) is guard


def restored_guard(values: array, time_zone: str | None) -> GuardState:
    """A guard read back from a changelog record: the shared instance again when it holds only
    opening facts (so a restarted scorer fits where the running one did)."""
    if len(values) == CALLS and values[1] != values[1] and values[2] != values[2]:
        bits = int(values[HOLDS])
        if not bits & HOLD_MASK:
            return opening_guard(time_zone, unpack_jurisdiction(bits >> JURISDICTION_SHIFT))
    return GuardState(values, time_zone)
