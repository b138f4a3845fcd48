r"""History files -> one stream of ``LoanEvent`` dicts + outcomes (DESIGN.md §4).

Three sources, one output: a :class:`History` whose ``events`` are in per-loan event-time
order (replay them through :func:`models.features.state.replay`) and whose ``outcomes`` map
loan_id to 1 (default / written off) or 0. Training, the producer and the batch scorer all
read files through here, so they all see exactly the same events.

- ``seed``: the collections export, one row per loan (:data:`SEED_COLUMNS`). Each row becomes
  ``LoanOpened`` + payment / missed-payment (+ collection-attempt) events whose replay
  reproduces the row's own values (see :func:`seed_row_events` for the exact rules).
- ``uci``: "default of credit card clients" (``ID, X1..X23, Y``): profile + six monthly
  statements April -> September.
- ``events``: JSON lines or an Avro container file of ``LoanEvent`` + an outcomes CSV
  (``loan_id,outcome``) found next to it (``outcomes.csv`` or ``outcomes.csv.gz``) or given
  explicitly.

Errors are :class:`AdapterError` with one line naming the file, row, column and the fix.

>>> import io
>>> header = "Loan_ID,Loan_Amount,Outstanding_Loan_Amount,Num_Missed_Payments,Days_Past_Due"
>>> csv = header + ',Recovery_Status\nL1,"10,000",4000,2,45,Written Off\n'
>>> history = read_history("seed", io.StringIO(csv))
>>> from models.features.state import replay
>>> state = replay(history.events)["L1"]
>>> state.feature_dict()["num_missed"], state.feature_dict()["days_past_due"], history.outcomes
(2.0, 45.0, {'L1': 1})
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from models.data.adapters.common import DAY_MS, AdapterError, History, event_id
from models.data.adapters.events import (
    EventLogWriter,
    read_events,
    write_avro,
    write_jsonl,
    write_outcomes,
)
from models.data.adapters.seed import (
    AS_OF_DAY,
    SEED_COLUMNS,
    SEED_REQUIRED,
    read_seed,
    seed_frame_history,
    seed_row_events,
)
from models.data.adapters.uci import read_uci

SOURCES = ("seed", "uci", "events")


def read_history(
    source: str, path: str | Path | IO[str], outcomes: str | Path | None = None
) -> History:
    """Read ``path`` as ``source`` ("seed", "uci" or "events").

    ``outcomes`` (events source only) overrides where the outcomes CSV is looked for.
    """
    if source == "seed":
        return read_seed(path)
    if source == "uci":
        return read_uci(path)
    if source == "events":
        return read_events(path, outcomes)
    raise AdapterError(f"unknown source {source!r}: use one of {', '.join(SOURCES)}")


__all__ = [
    "AS_OF_DAY",
    "DAY_MS",
    "SEED_COLUMNS",
    "SEED_REQUIRED",
    "SOURCES",
    "AdapterError",
    "EventLogWriter",
    "History",
    "event_id",
    "read_events",
    "read_history",
    "read_seed",
    "read_uci",
    "seed_frame_history",
    "seed_row_events",
    "write_avro",
    "write_jsonl",
    "write_outcomes",
]
