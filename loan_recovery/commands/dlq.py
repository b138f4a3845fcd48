"""``loan-recovery dlq redrive``: dead letters back to the input topic, exactly once
(``producer.redrive``)."""

from __future__ import annotations

from pathlib import Path

import typer

from loan_recovery.commands.common import (
    BOOTSTRAP_HELP,
    bootstrap_with_properties,
    fail,
    print_json,
)
from schemas.topics import Topics

app = typer.Typer(help="Work with the dead-letter topic.", no_args_is_help=True)
_T = Topics()


@app.command()
def redrive(
    reason: list[str] = typer.Option(
        [],
        "--reason",
        help="Only dead letters with this error.reason (repeatable), e.g. unknown_loan. "
        "Each filter keeps its own progress.",
    ),
    app_id: str = typer.Option(_T.app_id, envvar="LOANREC_APP_ID", help="The scorer's app id."),
    input_topic: str = typer.Option(_T.events, envvar="LOANREC_INPUT_TOPIC"),
    dlq_topic: str = typer.Option(_T.dlq, envvar="LOANREC_DLQ_TOPIC"),
    bootstrap_servers: str | None = typer.Option(None, help=BOOTSTRAP_HELP),
    kafka_config: Path | None = typer.Option(
        None,
        "--kafka-config",
        envvar="LOANREC_KAFKA_CONFIG",
        help="librdkafka properties file (key=value lines), e.g. SASL/SSL.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Re-send dead letters not redriven before to the input topic, after fixing their cause
    (a corrected LoanOpened, a new model or schema). A second run sends nothing new."""
    from confluent_kafka import KafkaException

    from producer.config import KafkaConfigError, load_properties
    from producer.redrive import redrive as run_redrive

    try:
        user = load_properties(kafka_config) if kafka_config else {}
    except KafkaConfigError as error:
        fail(str(error))
    client = {**user, "bootstrap.servers": bootstrap_with_properties(bootstrap_servers, user)}
    topics = Topics(events=input_topic, dlq=dlq_topic, app_id=app_id)
    try:
        summary = run_redrive(client, topics, frozenset(reason) or None)
    except KafkaException as error:
        detail = error.args[0].str() if hasattr(error.args[0], "str") else error.args[0]
        fail(f"redrive from {dlq_topic} to {input_topic} failed: {detail}")
    if as_json:
        print_json(summary.__dict__)
        return
    typer.echo(
        f"redriven {summary.redriven} of {summary.read} dead letters from {dlq_topic} to "
        f"{input_topic} (progress: consumer group {summary.group}); skipped: "
        f"{summary.skipped_by_filter} by --reason, {summary.skipped_value_dropped} without "
        f"their bytes, {summary.skipped_other_source} from another topic"
    )
