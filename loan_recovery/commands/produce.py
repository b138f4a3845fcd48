"""``loan-recovery produce``: replay history or stream live synthetic events into ``loan.events``.

Examples::

    loan-recovery produce --source seed --input book.csv
    loan-recovery produce --source events --input out/events.jsonl --rate 500
    loan-recovery produce --source synthetic --loans 2000 --months-per-second 2   # until Ctrl-C
    loan-recovery produce --source synthetic --guardrail-events --limit 5000 --dry-run --out g.avro
    loan-recovery produce --source uci --input UCI_Credit_Card.csv --dry-run --out uci.avro
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from loan_recovery.commands.common import (
    BOOTSTRAP_HELP,
    bootstrap_with_properties,
    fail,
    print_json,
)
from schemas.topics import Topics

EXIT_FAILED = 1  # some event was not acknowledged (delivery error, rejected, fatal)
EXIT_INTERRUPTED = 130  # a finite replay was stopped before its end


class Source(StrEnum):
    seed = "seed"
    uci = "uci"
    events = "events"
    synthetic = "synthetic"


def register(app: typer.Typer) -> None:
    app.command(name="produce")(produce)


def produce(
    source: Source = typer.Option(..., help="What to send; synthetic is a live stream."),
    input_path: Path | None = typer.Option(
        None, "--input", help="File to replay (seed/uci CSV; events: .jsonl or .avro)."
    ),
    topic: str = typer.Option(
        Topics().events,
        envvar="LOANREC_INPUT_TOPIC",
        help="Topic to produce to (the scorer's input topic).",
    ),
    rate: float | None = typer.Option(
        None, min=0.001, help="Limit to N events/s (token bucket). Default: as fast as possible."
    ),
    bootstrap_servers: str | None = typer.Option(None, help=BOOTSTRAP_HELP),
    kafka_config: Path | None = typer.Option(
        None,
        "--kafka-config",
        envvar="LOANREC_KAFKA_CONFIG",
        help="librdkafka properties file (key=value lines) passed through, e.g. for SASL/SSL.",
    ),
    loans: int = typer.Option(1000, min=1, help="synthetic: number of loans in the live book."),
    seed: int | None = typer.Option(
        None,
        min=0,
        help="synthetic: random seed. Default: a new one per run (shown in the "
        "summary), so a restarted stream never reuses the loan ids of the previous run.",
    ),
    months_per_second: float = typer.Option(
        1.0, min=0.0001, help="synthetic: months of loan history streamed per wall-clock second."
    ),
    guardrail_events: bool = typer.Option(
        False,
        "--guardrail-events/--no-guardrail-events",
        help="synthetic: also emit what the guardrails act on (LoanEvent v2): compliance holds "
        "set and released on ~10% of loans, 1-3 call attempts after ~half of missed payments "
        "(some with a conversation), a borrower time zone and jurisdiction (LoanEvent v3) on "
        "~half of openings.",
    ),
    limit: int | None = typer.Option(None, min=1, help="Stop after N events."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Write an Avro container file (--out) instead of Kafka."
    ),
    out: Path | None = typer.Option(None, help="--dry-run output file (.avro)."),
    flush_timeout: float = typer.Option(
        120.0, min=1.0, help="Seconds to wait at the end for outstanding acknowledgements."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Send LoanEvents (Avro, keyed by loan_id) with an idempotent producer; print a summary.

    Exit code 0 only if every event read was acknowledged by the broker (or written, with
    --dry-run); 1 if any was rejected or failed; 130 if a replay was interrupted early.
    SIGINT/SIGTERM stop the stream, flush what was sent, and print the summary.
    """
    from producer.engine import StopFlag

    if dry_run and out is None:
        fail("--dry-run needs --out FILE (the Avro container file to write)")
    if out is not None and not dry_run:
        fail("--out is only for --dry-run; to produce to Kafka drop --out")
    if guardrail_events and source is not Source.synthetic:
        fail(
            "--guardrail-events is for --source synthetic; a history file already carries the "
            "holds and contact attempts it has (generate them into a book with "
            "models.data.synthetic.with_guardrail_events)"
        )
    if source is Source.synthetic and input_path is not None:
        fail(
            "--input is not used with --source synthetic (it generates events); to replay a "
            "generated book use --source events --input BOOK/events.jsonl"
        )
    # Kafka settings and the topic are checked before the source is read: a typo in a
    # properties file should not cost a full parse of a large export first.
    producer = (
        None
        if dry_run
        else _kafka_producer(bootstrap_servers, kafka_config, topic, rate, flush_timeout)
    )
    stop = StopFlag()
    event_source = _open_source(
        source.value, input_path, loans, seed, months_per_second, stop, guardrail_events
    )
    events = _limited(event_source.events, limit)
    known = [x for x in (event_source.total, limit) if x is not None]
    bar = _progress_bar(progress and not as_json, min(known, default=None), dry_run)
    with _stop_on_signals(stop), bar as on_progress:
        if producer is None:
            from producer.engine import write_avro_file

            assert out is not None
            try:
                summary = write_avro_file(events, out, stop, on_progress)
            except OSError as error:
                fail(f"--out {out}: cannot write it ({error.strerror}); pick a writable path")
        else:
            summary = producer.run(events, stop, on_progress)
    _report(summary, source.value, as_json, event_source.info)
    if not summary.ok:
        raise typer.Exit(EXIT_FAILED)
    if summary.interrupted and not event_source.live:
        raise typer.Exit(EXIT_INTERRUPTED)


def _open_source(
    source: str,
    input_path: Path | None,
    loans: int,
    seed: int | None,
    months_per_second: float,
    stop: Any,
    guardrail_events: bool,
) -> Any:
    from producer.sources import SourceError, open_history, open_synthetic

    try:
        if source == "synthetic":
            return open_synthetic(loans, seed, months_per_second, stop.is_set, guardrail_events)
        return open_history(source, input_path)
    except SourceError as error:
        fail(str(error))


def _limited(events: Any, limit: int | None) -> Any:
    from itertools import islice

    return events if limit is None else islice(events, limit)


def _kafka_producer(
    bootstrap: str | None,
    kafka_config: Path | None,
    topic: str,
    rate: float | None,
    flush_timeout: float,
) -> Any:
    """The producer, built before the source is read, so that a typo in a properties file or
    a missing topic does not cost a full parse of a large export first."""
    from confluent_kafka import KafkaException

    from producer.config import (
        KafkaConfigError,
        check_user_config,
        load_properties,
        producer_config,
    )
    from producer.engine import EventProducer

    where = f"--kafka-config {kafka_config}" if kafka_config else "Kafka settings"
    try:
        user = load_properties(kafka_config) if kafka_config else {}
        check_user_config(user, where)
        servers = bootstrap_with_properties(bootstrap, user)
        _check_topic({**user, "bootstrap.servers": servers}, topic, where)
        return EventProducer(
            producer_config(servers, user, where), topic, rate=rate, flush_timeout_s=flush_timeout
        )
    except KafkaConfigError as error:
        fail(str(error))
    except KafkaException as error:  # librdkafka refused a property (name or value)
        fail(f"{where}: {error.args[0].str()}; fix or remove that property")


def _check_topic(config: dict[str, str], topic: str, where: str, timeout_s: float = 10.0) -> None:
    """Fail early on a missing topic: auto-creating it would give it the broker's default
    partition count, and the batch reference (`score`) assumes the partitions we created.
    An authentication failure ends the wait at once, with librdkafka's reason."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    refused: list[KafkaError] = []
    auth = {
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._SSL,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
    }
    admin = AdminClient(
        {
            **config,
            "log_level": 0,  # our one-line error says it all
            "error_cb": lambda e: refused.append(e) if e.code() in auth else None,
        }
    )
    servers = config["bootstrap.servers"]
    settings = "--bootstrap-servers / $LOANREC_BOOTSTRAP_SERVERS" + (
        f" / {where}" if where.startswith("--") else ""
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            metadata = admin.list_topics(timeout=1.0)
            break
        except KafkaException as error:
            admin.poll(0)  # serves error_cb
            if refused:
                fail(f"Kafka at {servers} refused us: {refused[0].str()}; check {where}")
            if time.monotonic() > deadline:
                fail(f"cannot reach Kafka at {servers} ({error.args[0].str()}); check {settings}")
    if topic not in metadata.topics:
        fail(
            f"topic {topic} does not exist on {servers}: run `loan-recovery topics create` "
            "(or pass --topic)"
        )


@contextmanager
def _stop_on_signals(stop: Any) -> Iterator[None]:
    """First SIGINT/SIGTERM: stop reading, flush, summarise. A second SIGINT aborts."""

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextmanager
def _progress_bar(enabled: bool, total: int | None, dry_run: bool = False) -> Iterator[Any]:
    """A rich progress bar on stderr: sent, acknowledged, rate and ETA; None if disabled."""
    if not enabled:
        yield None
        return
    columns = [
        BarColumn(bar_width=10),
        MofNCompleteColumn(separator="/"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("produce", total=total, detail="")

        def update(summary: Any, in_flight: int) -> None:
            speed = bar.tasks[0].speed
            errors = summary.failed + summary.rejected
            acked = max(0, summary.sent - summary.failed - in_flight)
            detail = (
                f"written, {errors} rejected,"
                if dry_run
                else f"sent, {acked:,} acked, {errors} errors,"
            )
            rate = f" {speed:,.0f}/s" if speed else ""
            bar.update(task, completed=summary.sent, detail=detail + rate)

        yield update


def _report(summary: Any, source: str, as_json: bool, info: dict[str, Any]) -> None:
    payload = {"source": source, **info, **summary.to_dict()}
    if as_json:
        print_json(payload)
        return
    table = Table("", "", title="produce summary", show_header=False)
    target = f"file {summary.out}" if summary.dry_run else f"topic {summary.topic}"
    delivered = (
        [("written", f"{summary.sent:,}")]
        if summary.dry_run
        else [
            ("sent", f"{summary.sent:,}"),
            ("acknowledged", f"{summary.acknowledged:,}"),
            ("failed", f"{summary.failed:,}"),
        ]
    )
    rows = [
        ("source → target", f"{source} → {target}"),
        *((key, str(value)) for key, value in info.items()),
        ("read", f"{summary.read:,}"),
        *delivered,
        ("rejected", f"{summary.rejected:,}"),
        ("seconds", f"{summary.seconds:.2f}"),
        ("events/s", f"{summary.events_per_s:,.0f}"),
    ]
    rows += [(f"  {name}", f"{count:,}") for name, count in summary.by_type.items()]
    if summary.interrupted:
        rows.append(("interrupted", "yes (stopped by signal; sent events were flushed)"))
    rows += [(f"error {name}", f"{count:,}") for name, count in summary.errors.items()]
    if summary.first_error:
        rows.append(("first error", summary.first_error))
    for row in rows:
        table.add_row(*row)
    Console().print(table)
