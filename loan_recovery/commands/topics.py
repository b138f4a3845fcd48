"""``loan-recovery topics create``: the topics of DESIGN.md §3, idempotently."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from loan_recovery.commands.common import (
    BOOTSTRAP_HELP,
    bootstrap_with_properties,
    fail,
    print_json,
)
from schemas.topics import DEFAULT_PARTITIONS, Topics

app = typer.Typer(help="Manage the project's Kafka topics.", no_args_is_help=True)


@app.command()
def create(
    partitions: int = typer.Option(DEFAULT_PARTITIONS, min=1, help="Partitions per topic."),
    replication_factor: int = typer.Option(
        -1,
        min=-1,
        help="Replicas per partition. Default -1: the cluster's "
        "default.replication.factor (3 on a typical production cluster, 1 on the local broker).",
    ),
    bootstrap_servers: str | None = typer.Option(None, help=BOOTSTRAP_HELP),
    kafka_config: Path | None = typer.Option(
        None,
        "--kafka-config",
        envvar="LOANREC_KAFKA_CONFIG",
        help="librdkafka properties file (key=value lines) for the admin client, e.g. SASL/SSL.",
    ),
    app_id: str = typer.Option("loan-recovery", help="Application id; names the changelog."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Create loan.events, strategy changes, risk alerts, the DLQ and the compacted changelog."""
    from confluent_kafka import KafkaException

    from producer.admin import create_topics
    from producer.config import KafkaConfigError, load_properties

    where = f"--kafka-config {kafka_config}" if kafka_config else "Kafka settings"
    try:
        user = load_properties(kafka_config) if kafka_config else {}
        servers = bootstrap_with_properties(bootstrap_servers, user)
        results = create_topics(
            servers,
            Topics(app_id=app_id),
            partitions,
            extra_config=user,
            replication_factor=replication_factor,
        )
    except KafkaConfigError as error:
        fail(str(error))
    except KafkaException as error:  # a refused property, or the cluster refused the topics
        error = error.args[0]
        hint = (
            "; --replication-factor cannot exceed the number of brokers"
            if error.code() == error.INVALID_REPLICATION_FACTOR
            else ""
        )
        fail(f"{where}: {error.str()}{hint}")
    if as_json:
        print_json([r.__dict__ for r in results])
        return
    table = Table("topic", "partitions", "replicas", "cleanup.policy", "status")
    for r in results:
        table.add_row(
            r.name,
            str(r.partitions),
            _replicas(r.replication_factor),
            r.cleanup_policy,
            "created" if r.created else "exists",
        )
    Console().print(table)


def _replicas(replication_factor: int) -> str:
    return "cluster default" if replication_factor == -1 else str(replication_factor)
