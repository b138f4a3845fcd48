"""``loan-recovery topics create``: the topics of DESIGN.md §3, idempotently."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from loan_recovery.commands.common import BOOTSTRAP_HELP, bootstrap_or_fail, print_json
from schemas.topics import DEFAULT_PARTITIONS, Topics

app = typer.Typer(help="Manage the project's Kafka topics.", no_args_is_help=True)


@app.command()
def create(
    partitions: int = typer.Option(DEFAULT_PARTITIONS, min=1, help="Partitions per topic."),
    bootstrap_servers: str | None = typer.Option(None, help=BOOTSTRAP_HELP),
    app_id: str = typer.Option("loan-recovery", help="Application id; names the changelog."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Create loan.events, strategy changes, risk alerts, the DLQ and the compacted changelog."""
    from producer.admin import create_topics

    results = create_topics(bootstrap_or_fail(bootstrap_servers), Topics(app_id=app_id),
                            partitions)  # fmt: skip
    if as_json:
        print_json([r.__dict__ for r in results])
        return
    table = Table("topic", "partitions", "cleanup.policy", "status")
    for r in results:
        table.add_row(r.name, str(r.partitions), r.cleanup_policy,
                      "created" if r.created else "exists")  # fmt: skip
    Console().print(table)
