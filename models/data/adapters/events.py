"""Native event logs (JSON lines or Avro object container files of ``LoanEvent``) + an
outcomes CSV, and the writers for both."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import fastavro
import fastavro.write
import numpy as np

from models.data.adapters.common import AdapterError, History, _match_columns, _numbers, _read_csv
from schemas.registry import default_registry


def read_events(path: str | Path | IO[str], outcomes: str | Path | None = None) -> History:
    """JSON lines or an Avro container file of ``LoanEvent`` + an outcomes CSV.

    The outcomes CSV (``loan_id,outcome``; outcome 1 = default / written off) is ``outcomes``
    when given, else ``outcomes.csv`` / ``outcomes.csv.gz`` next to the event log; without one
    the outcomes come from ``LoanClosed`` events (WRITTEN_OFF = 1, other reasons = 0).
    """
    if not isinstance(path, (str, Path)):
        raise AdapterError("the events source needs a file path")
    path = Path(path)
    if not path.exists():
        raise AdapterError(f"{path}: no such file")
    with open(path, "rb") as raw:
        magic = raw.read(4)
    events = list(_read_avro(path) if magic == b"Obj\x01" else _read_jsonl(path))
    events.sort(key=lambda e: (e["loan_id"], e["occurred_at"]))  # stable: file order on ties
    if outcomes is None:
        for name in ("outcomes.csv", "outcomes.csv.gz"):
            if (path.parent / name).exists():
                outcomes = path.parent / name
                break
    if outcomes is not None:
        return History(events, _read_outcomes(Path(outcomes)), "events", len(events))
    found, closed_at = _closed_outcomes(events)
    still_open = {e["loan_id"] for e in events} - set(found)
    return History(
        events, found, "events", len(events), outcome_at=closed_at, open_loans=still_open
    )


def _read_avro(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as handle:
        try:
            for n, event in enumerate(fastavro.reader(handle, return_record_name=True), 1):
                if not isinstance(event, dict) or not isinstance(event.get("body"), tuple):
                    raise AdapterError(
                        f"{path}: record {n} is not a LoanEvent; the container "
                        "must use the LoanEvent schema"
                    )
                yield _plain(event)
        except AdapterError:
            raise
        except Exception as error:  # fastavro raises many types for corrupt blocks
            raise AdapterError(
                f"{path}: not a readable Avro container of LoanEvent ({error}); re-export it"
            ) from None


def _plain(event: dict[str, Any]) -> dict[str, Any]:
    """Undo fastavro's logical-type conversions (a writer schema with timestamp-millis / date /
    uuid yields datetime / date / UUID objects): events are plain ints and strings."""
    import datetime as dt

    at = event["occurred_at"]
    if isinstance(at, dt.datetime):
        event["occurred_at"] = int(at.timestamp() * 1000)
    if not isinstance(event["event_id"], str):
        event["event_id"] = str(event["event_id"])
    _, body = event["body"]
    due = body.get("installment_due_date")
    if isinstance(due, dt.date):
        body["installment_due_date"] = (due - dt.date(1970, 1, 1)).days
    return event


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                body = event["body"]
                # JSON has no tuples: accept ["type", {...}] or {"type": ..., "data"/"fields": ...}
                if isinstance(body, dict):
                    body = (body["type"], body.get("data", body.get("fields")))
                name, fields = body
                if "." not in name:
                    name = f"loanrec.events.{name}"
                event["body"] = (name, fields)
                for key in ("event_id", "loan_id", "borrower_id", "occurred_at"):
                    if key not in event:
                        raise KeyError(key)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise AdapterError(
                    f"{path}: line {line_no}: not a LoanEvent ({type(error).__name__}: {error}); "
                    "each line must be a JSON object with event_id, loan_id, borrower_id, "
                    "occurred_at and body [type, fields]"
                ) from None
            yield event


def _read_outcomes(path: Path) -> dict[str, int]:
    frame = _read_csv(path)
    frame = _match_columns(frame, ("loan_id", "outcome"), ("loan_id", "outcome"), path)
    values = _numbers(frame["outcome"])
    bad = np.flatnonzero(~np.isin(values, (0.0, 1.0)))
    if bad.size:
        raise AdapterError(
            f"{path}: row {bad[0] + 2}, column 'outcome': "
            f"{frame['outcome'].iloc[bad[0]]!r} is not 0 or 1"
        )
    return dict(zip(frame["loan_id"].astype(str), values.astype(int).tolist(), strict=True))


def _closed_outcomes(events: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """(outcome, closed at) of every loan with a ``LoanClosed`` event."""
    out: dict[str, int] = {}
    at: dict[str, int] = {}
    for event in events:
        name, body = event["body"]
        if name.endswith("LoanClosed"):
            out[event["loan_id"]] = int(body.get("reason") == "WRITTEN_OFF")
            at[event["loan_id"]] = int(event["occurred_at"])
    return out, at


def write_jsonl(events: Iterable[dict[str, Any]], handle: IO[str]) -> int:
    """Write events as JSON lines (``body`` as ``[type, fields]``); returns the count."""
    n = 0
    dumps = json.dumps
    for event in events:
        handle.write(dumps(event, allow_nan=True, separators=(",", ":")))
        handle.write("\n")
        n += 1
    return n


def write_avro(events: Iterable[dict[str, Any]], path: Path, codec: str = "deflate") -> int:
    """Write events as an Avro object container file (LoanEvent schema); returns the count."""
    events = events if isinstance(events, list) else list(events)
    with open(path, "wb") as handle:
        fastavro.writer(handle, default_registry().latest("LoanEvent").parsed, events, codec=codec)
    return len(events)


class EventLogWriter:
    """Incremental event-log writer: Avro object container for ``*.avro``, else JSON lines.

    >>> import tempfile, pathlib
    >>> from models.data.synthetic import generate_book
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "log.avro"
    >>> with EventLogWriter(path) as log:
    ...     log.write(generate_book(10, seed=0)[1])
    >>> from schemas.events import with_defaults
    >>> back = read_events(path).events  # the latest LoanEvent: v2 fields at their defaults
    >>> back == [with_defaults(e) for e in generate_book(10, seed=0)[1]]
    True
    """

    def __init__(self, path: Path, codec: str = "deflate") -> None:
        self.path = Path(path)
        self.count = 0
        self._avro = self.path.suffix == ".avro"
        self._handle: IO[Any] = open(  # noqa: SIM115 (closed in close())
            self.path,
            "wb" if self._avro else "w",
            encoding=None if self._avro else "utf-8",
        )
        if self._avro:
            schema = default_registry().latest("LoanEvent").parsed
            self._writer = fastavro.write.Writer(self._handle, schema, codec=codec)

    def write(self, events: Iterable[dict[str, Any]]) -> None:
        if self._avro:
            for event in events:
                self._writer.write(event)
                self.count += 1
        else:
            self.count += write_jsonl(events, self._handle)

    def close(self) -> None:
        if self._avro:
            self._writer.flush()
        self._handle.close()

    def __enter__(self) -> EventLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_outcomes(outcomes: dict[str, int], path: Path) -> None:
    """``loan_id,outcome`` CSV (gzip-compressed when the name ends in ``.gz``)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("loan_id", "outcome"))
        writer.writerows(outcomes.items())
