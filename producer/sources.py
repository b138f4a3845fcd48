"""Where events come from: history files through ``models.data.adapters``, or the live synthetic
stream of ``models.data.synthetic``. The producer never parses files itself, so a seed CSV, a UCI
export and an event log become exactly the events that training sees.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producer.errors import ProducerError

SOURCES = ("seed", "uci", "events", "synthetic")
MONTH_MS = 30.4375 * 24 * 3600 * 1000  # mean Gregorian month


class SourceError(ProducerError, ValueError):
    """The source cannot be opened; the message names the file or option and the fix."""


@dataclass
class EventSource:
    name: str
    events: Iterable[dict[str, Any]]
    total: int | None  # known length, for the progress bar's ETA
    live: bool  # runs until stopped
    info: dict[str, Any] = field(default_factory=dict)  # for the summary, e.g. the seed


def open_history(source: str, path: Path | None) -> EventSource:
    """A finite replay of ``seed``/``uci``/``events`` history through the models adapters."""
    if path is None:
        raise SourceError(f"--source {source} needs --input PATH (the file to replay)")
    if not Path(path).exists():
        raise SourceError(f"--input {path}: no such file")
    from models.data.adapters import AdapterError, read_history

    try:
        history = read_history(source, path)
    except AdapterError as error:
        raise SourceError(str(error)) from None
    events = history.events
    total = len(events) if hasattr(events, "__len__") else None
    return EventSource(source, events, total, live=False)


def paced_by_event_time(
    events: Iterable[dict[str, Any]],
    months_per_second: float,
    stop: Callable[[], bool],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """Yield each event when its event time, compressed to ``months_per_second`` months of
    loan history per wall-clock second, comes due. Ends early when ``stop()`` is true."""
    start_wall: float | None = None
    start_event = 0
    for event in events:
        if start_wall is None:
            start_wall, start_event = clock(), event["occurred_at"]
        due = start_wall + (event["occurred_at"] - start_event) / MONTH_MS / months_per_second
        while (delay := due - clock()) > 0:
            if stop():
                return
            sleep(min(delay, 0.1))
        if stop():
            return
        yield event


def open_synthetic(
    loans: int,
    seed: int | None,
    months_per_second: float,
    stop: Callable[[], bool],
    guardrail_events: bool = False,
) -> EventSource:
    """The live stream: ``models.data.synthetic.iter_live_events`` paced to wall-clock time;
    with ``guardrail_events``, also the compliance holds, call attempts and borrower time
    zones the guardrails act on (``with_live_guardrail_events``, its default rates).

    Loan and event ids derive from the seed, so two runs with one seed reuse ids (the scorer
    would take the second run's events for duplicates or re-openings); without a seed, each
    run draws a fresh one."""
    from models.data.synthetic import iter_live_events, with_live_guardrail_events

    if seed is None:
        seed = secrets.randbelow(10**9)
    events = iter_live_events(loans, seed)
    if guardrail_events:
        events = with_live_guardrail_events(events, seed)
    return EventSource(
        "synthetic",
        paced_by_event_time(events, months_per_second, stop),
        total=None,
        live=True,
        info={
            "seed": seed,
            "loans": loans,
            "months_per_second": months_per_second,
            "guardrail_events": guardrail_events,
        },
    )
