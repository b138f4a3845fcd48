"""``loan-recovery broker start|stop|status``: a local Apache Kafka broker (KRaft)."""

from __future__ import annotations

from pathlib import Path

import typer

from loan_recovery.broker import BrokerError, LocalBroker, LocalCluster, default_data_dir
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
    nodes: int = typer.Option(
        1,
        min=1,
        help="Nodes: more than 1 starts a KRaft cluster (each node broker+controller, its own "
        "data dir under --data-dir); topics replicated to all, min.insync.replicas one less.",
    ),
) -> None:
    """Start the broker (fetching the jars if needed); prints bootstrap.servers=HOST:PORT."""
    if nodes > 1 or LocalCluster.exists(data_dir):
        _start_cluster(data_dir, nodes, timeout)
        return
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


def _start_cluster(data_dir: Path | None, nodes: int, timeout: float) -> None:
    cluster = LocalCluster(data_dir, nodes)
    if len(cluster.nodes) != nodes and nodes > 1:
        fail(
            f"{cluster.data_dir} holds a {len(cluster.nodes)}-node cluster; use another --data-dir"
        )
    try:
        bootstrap = cluster.start(timeout_s=timeout)
    except BrokerError as error:
        fail(str(error))
    pids = ", ".join(str(s.pid) for s in cluster.status() if s)
    typer.echo(
        f"started {len(cluster.nodes)} nodes (pids {pids}, data dir {cluster.data_dir})", err=True
    )
    typer.echo(f"bootstrap.servers={bootstrap}")


@app.command()
def stop(data_dir: Path | None = DATA_DIR) -> None:
    """Stop exactly the broker process(es) this data dir started."""
    if LocalCluster.exists(data_dir):
        typer.echo("stopped" if LocalCluster(data_dir).stop() else "not running")
        return
    if LocalBroker(data_dir).stop():
        typer.echo("stopped")
    else:
        typer.echo("not running")


@app.command()
def status(data_dir: Path | None = DATA_DIR) -> None:
    """Say whether the broker runs; exit code 1 if it does not."""
    if LocalCluster.exists(data_dir):
        cluster = LocalCluster(data_dir)
        statuses = cluster.status()
        for node, state in zip(cluster.nodes, statuses, strict=True):
            typer.echo(
                f"node {node.node_id}: " + (f"running (pid {state.pid})" if state else "down")
            )
        if not any(statuses):
            raise typer.Exit(1)
        typer.echo(f"bootstrap.servers={cluster.bootstrap_servers}")
        return
    running = LocalBroker(data_dir).status()
    if not running:
        typer.echo("not running")
        raise typer.Exit(1)
    typer.echo(f"running (pid {running.pid}, data dir {running.data_dir})")
    typer.echo(f"bootstrap.servers={running.bootstrap_servers}")
