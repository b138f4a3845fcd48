"""``loan-recovery broker start|stop|status``: a local Apache Kafka broker (KRaft)."""

from __future__ import annotations

from pathlib import Path

import typer

from loan_recovery.broker import BrokerError, LocalBroker, default_data_dir
from loan_recovery.commands.common import fail

app = typer.Typer(
    help="Run a local Apache Kafka broker (KRaft, 127.0.0.1) for dev and demos.",
    no_args_is_help=True,
)

DATA_DIR = typer.Option(
    None,
    "--data-dir",
    help=f"Broker data dir; each dir is an independent broker. Default: {default_data_dir()}",
)


@app.command()
def start(
    data_dir: Path | None = DATA_DIR,
    timeout: float = typer.Option(120.0, help="Seconds to wait until it answers."),
) -> None:
    """Start the broker (fetching the jars if needed); prints bootstrap.servers=HOST:PORT."""
    broker = LocalBroker(data_dir)
    already = broker.status()
    if already:
        typer.echo(f"already running (pid {already.pid}, data dir {already.data_dir})", err=True)
        typer.echo(f"bootstrap.servers={already.bootstrap_servers}")
        return
    try:
        status = broker.start(timeout_s=timeout)
    except BrokerError as error:
        fail(str(error))
    typer.echo(f"started (pid {status.pid}, data dir {status.data_dir})", err=True)
    typer.echo(f"bootstrap.servers={status.bootstrap_servers}")


@app.command()
def stop(data_dir: Path | None = DATA_DIR) -> None:
    """Stop exactly the broker process this data dir started."""
    if LocalBroker(data_dir).stop():
        typer.echo("stopped")
    else:
        typer.echo("not running")


@app.command()
def status(data_dir: Path | None = DATA_DIR) -> None:
    """Say whether the broker runs; exit code 1 if it does not."""
    running = LocalBroker(data_dir).status()
    if not running:
        typer.echo("not running")
        raise typer.Exit(1)
    typer.echo(f"running (pid {running.pid}, data dir {running.data_dir})")
    typer.echo(f"bootstrap.servers={running.bootstrap_servers}")
