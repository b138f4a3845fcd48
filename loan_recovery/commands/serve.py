"""``loan-recovery serve`` (the streaming scorer) and ``loan-recovery score`` (its batch
reference: the same processor over a file).

Examples::

    loan-recovery serve --model out/model --metrics-port 9108
    LOANREC_BOOTSTRAP_SERVERS=kafka:9092 loan-recovery serve --model /models/current \\
        --kafka-config client.properties --instance-id scorer-1
    loan-recovery score --model out/model --source events --input out/book/events.jsonl \\
        --out scores.csv --changes changes.csv
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from loan_recovery.commands.common import BOOTSTRAP_HELP, bootstrap_or_fail, fail, print_json
from schemas.topics import DEFAULT_PARTITIONS, Topics

EXIT_FATAL = 1  # fenced or a fatal Kafka error while running
_T = Topics()
STRATEGY_MODEL_HELP = (
    "Treatment-model bundle (`loan-recovery train-strategy --out`): serve the learned policy "
    "to every loan, or to the policy file's `experiment:` arms with `policy: learned`."
)
RETENTION_HELP = (
    "Days of event time a closed loan stays in state after its last event (its close, or "
    "its latest recovery after a write-off); later events for it are dead letters "
    "(unknown_loan). `serve` and `score` need the same value for parity."
)


class Source(StrEnum):
    seed = "seed"
    uci = "uci"
    events = "events"
    synthetic = "synthetic"


class GuaranteeOption(StrEnum):
    exactly_once = "exactly-once"
    at_least_once = "at-least-once"


def register(app: typer.Typer) -> None:
    app.command(name="serve")(serve)
    app.command(name="score")(score)


def _env(name: str) -> str:
    return f"LOANREC_{name}"


def serve(
    model: Path = typer.Option(..., envvar=_env("MODEL"), help="Model bundle directory."),
    policy: Path | None = typer.Option(
        None, envvar=_env("POLICY"), help="Strategy policy file. Default: the shipped one."
    ),
    strategy_model: Path | None = typer.Option(
        None, envvar=_env("STRATEGY_MODEL"), help=STRATEGY_MODEL_HELP
    ),
    bootstrap_servers: str | None = typer.Option(None, help=BOOTSTRAP_HELP),
    metrics_port: int = typer.Option(
        9108,
        envvar=_env("METRICS_PORT"),
        min=0,
        help="Port of /metrics, /healthz, /readyz and /loans/{loan_id}; 0 = any free.",
    ),
    http_host: str = typer.Option(
        "127.0.0.1",
        envvar=_env("HTTP_HOST"),
        help="Address the HTTP port binds (0.0.0.0: all; /loans carries personal data).",
    ),
    http_advertise: str | None = typer.Option(
        None,
        envvar=_env("HTTP_ADVERTISE"),
        help="HOST:PORT other instances name in a 421 for a loan this one owns. "
        "Default: the bound host (the host name if 0.0.0.0) and port.",
    ),
    app_id: str = typer.Option(
        _T.app_id, envvar=_env("APP_ID"), help="Application id: names the changelog topic."
    ),
    group_id: str | None = typer.Option(
        None, envvar=_env("GROUP_ID"), help="Consumer group. Default: the app id."
    ),
    instance_id: str | None = typer.Option(
        None,
        envvar=_env("INSTANCE_ID"),
        help="Unique per running instance, stable across its restarts (names its "
        "transactional id and group.instance.id). Default: the host name (a StatefulSet's "
        "pod name).",
    ),
    static_membership: bool = typer.Option(
        True,
        "--static-membership/--dynamic-membership",
        envvar=_env("STATIC_MEMBERSHIP"),
        help="group.instance.id = the instance id: a restart takes its place in the group at "
        "once; a dead instance holds its partitions until session.timeout.ms.",
    ),
    input_topic: str = typer.Option(_T.events, envvar=_env("INPUT_TOPIC")),
    strategy_topic: str = typer.Option(_T.strategy_changes, envvar=_env("STRATEGY_TOPIC")),
    alerts_topic: str = typer.Option(_T.risk_alerts, envvar=_env("ALERTS_TOPIC")),
    dlq_topic: str = typer.Option(_T.dlq, envvar=_env("DLQ_TOPIC")),
    commit_interval_ms: int = typer.Option(
        50,
        envvar=_env("COMMIT_INTERVAL_MS"),
        min=1,
        help="The longest a transaction stays open.",
    ),
    caught_up_commit_ms: int = typer.Option(
        50,
        envvar=_env("CAUGHT_UP_COMMIT_MS"),
        min=1,
        help="Commit a transaction this old once the scorer has caught up with its input.",
    ),
    guarantee: GuaranteeOption = typer.Option(
        GuaranteeOption.exactly_once, envvar=_env("GUARANTEE")
    ),
    kafka_config: Path | None = typer.Option(
        None,
        "--kafka-config",
        envvar=_env("KAFKA_CONFIG"),
        help="librdkafka properties file (key=value) passed through, e.g. for SASL/SSL.",
    ),
    exit_when_idle: float | None = typer.Option(
        None,
        envvar=_env("EXIT_WHEN_IDLE"),
        min=0.1,
        help="Commit and exit after this many seconds without input (demo, tests).",
    ),
    max_batch: int = typer.Option(
        2000,
        envvar=_env("MAX_BATCH"),
        min=1,
        help="Most events per poll (one vectorised scoring call).",
    ),
    min_batch: int = typer.Option(
        500,
        envvar=_env("MIN_BATCH"),
        min=1,
        help="When input trickles in, gather this many events per batch (--batch-wait-ms).",
    ),
    batch_wait_ms: int = typer.Option(
        25,
        envvar=_env("BATCH_WAIT_MS"),
        min=0,
        help="The longest a poll waits to gather --min-batch events (never past a due commit).",
    ),
    background_commit: bool = typer.Option(
        True,
        "--background-commit/--no-background-commit",
        envvar=_env("BACKGROUND_COMMIT"),
        help="Exactly once: process the next batch while a commit runs (its outputs wait for it).",
    ),
    outage_patience_s: float = typer.Option(
        300.0,
        envvar=_env("OUTAGE_PATIENCE_S"),
        min=0,
        help="Seconds to wait out a Kafka outage (no commit succeeds) before exiting 1.",
    ),
    closed_retention_days: float = typer.Option(
        180.0,
        envvar=_env("CLOSED_RETENTION_DAYS"),
        help=RETENTION_HELP,
    ),
    restore_wait_s: float = typer.Option(
        60.0,
        envvar=_env("RESTORE_WAIT_S"),
        min=0,
        help="Seconds a restore waits for the changelog to reflect the committed input "
        "offset before exiting 1.",
    ),
) -> None:
    """Score loan events as they arrive; emit strategy changes and early-warning alerts.

    Exactly-once by default. SIGTERM/SIGINT finish the batch, commit and exit 0; SIGHUP reloads
    --model, --policy and --strategy-model together (all kept if any does not validate). A
    Kafka outage is waited out (/readyz fails meanwhile) for --outage-patience-s. Exit 1 on
    fencing, a fatal Kafka error or an outage longer than that, 2 on bad configuration. With
    LOANREC_HTTP_TOKEN set, GET /loans/{loan_id} requires it as a bearer token (an environment
    variable only: a flag would show in `ps`).
    """
    from consumer.app import ScorerApp
    from consumer.config import Guarantee, ServeConfig, default_instance_id
    from consumer.errors import ConfigError, FatalError
    from consumer.health import HealthServer
    from consumer.logs import log_event
    from consumer.lookup import LoanLookup, advertised_address, group_owner_finder
    from consumer.metrics import ScorerMetrics
    from consumer.reload import load_models
    from schemas.client_config import KafkaConfigError
    from schemas.client_config import load_properties as load_kafka_properties

    bundle, policy_obj = _load_model_and_policy(model, policy, strategy_model)
    try:
        properties = load_kafka_properties(kafka_config) if kafka_config else {}
        servers = (
            bootstrap_servers
            or os.environ.get("LOANREC_BOOTSTRAP_SERVERS")
            or properties.pop("bootstrap.servers", None)
            or bootstrap_or_fail(None)
        )
        properties.pop("bootstrap.servers", None)
        topics = Topics(
            events=input_topic,
            strategy_changes=strategy_topic,
            risk_alerts=alerts_topic,
            dlq=dlq_topic,
            app_id=app_id,
        )
        config = ServeConfig(
            bootstrap_servers=servers,
            model_dir=model,
            policy_path=policy,
            topics=topics,
            group_id=group_id,
            instance_id=instance_id or default_instance_id(),
            static_membership=static_membership,
            metrics_port=metrics_port,
            metrics_host=http_host,
            commit_interval_ms=commit_interval_ms,
            caught_up_commit_ms=caught_up_commit_ms,
            guarantee=Guarantee(guarantee.value),
            kafka_properties=properties,
            exit_when_idle_s=exit_when_idle,
            max_batch=max_batch,
            min_batch=min_batch,
            batch_wait_ms=batch_wait_ms,
            background_commit=background_commit,
            outage_patience_s=outage_patience_s,
            closed_retention_days=closed_retention_days,
            restore_wait_s=restore_wait_s,
        )
    except (ConfigError, KafkaConfigError) as error:
        fail(str(error))
    input_partitions = _check_topics(config)
    metrics = ScorerMetrics()
    token = os.environ.get("LOANREC_HTTP_TOKEN") or None
    try:
        server = HealthServer(metrics, config.metrics_host, metrics_port, token=token)
    except OSError as error:
        fail(f"--http-host {http_host} --metrics-port {metrics_port}: {error.strerror}")
    config.http_address = http_advertise or advertised_address(http_host, server.port)
    server.lookup = LoanLookup(
        input_partitions,
        server.state.lock,
        lambda: server.state.partitions,
        group_owner_finder(config.admin_config(), config.group, topics.events),
    )
    log_event(
        "metrics_listening",
        host=http_host,
        port=server.port,
        advertised=config.http_address,
        endpoints=["/metrics", "/healthz", "/readyz", "/loans/{loan_id}"],
        loans_token=token is not None,
    )
    scorer = ScorerApp(
        config,
        bundle,
        policy_obj,
        metrics,
        server.state,
        models_loader=lambda: load_models(model, policy, strategy_model),
    )
    scorer.install_signal_handlers()
    try:
        scorer.run()
    except FatalError as error:
        log_event("fatal", level="error", error=str(error))
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_FATAL) from None
    finally:
        server.close()


def _load_model_and_policy(
    model: Path, policy: Path | None, strategy_model: Path | None = None
) -> tuple[Any, Any]:
    """The early-warning bundle and what decides: the table, or (with the policy file's
    ``experiment:`` or ``--strategy-model``) the learned policy and arms
    (``models.strategy.stream``); what a SIGHUP reloads, by the same function
    (``consumer.reload``). Every failure exits 2 naming the setting."""
    from consumer.reload import ModelLoadError, load_models

    try:
        models = load_models(model, policy, strategy_model)
    except ModelLoadError as error:
        fail(str(error))
    return models.bundle, models.policy


def _check_topics(config: Any) -> int:
    """The topics must exist, the changelog be compacted and partitioned like the input, the
    outputs too (``consumer.topology``). Returns the input's partition count (the loan lookup
    finds a loan's partition with it)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from consumer.topology import problems, read_layout

    admin = AdminClient({**config.admin_config(), "log_level": 0})
    try:
        layout = read_layout(admin, config.topics, timeout_s=15.0)
    except KafkaException as error:
        fail(f"cannot reach Kafka at {config.bootstrap_servers} ({error.args[0].str()})")
    found = problems(layout, config.topics, expected_partitions=None)
    if found:
        fail("; ".join(found))
    return layout.partitions[config.topics.events]


def score(
    model: Path = typer.Option(..., help="Model bundle directory."),
    source: Source = typer.Option(..., help="Input kind (as for `produce`)."),
    input_path: Path | None = typer.Option(None, "--input", help="File (seed/uci/events)."),
    out: Path = typer.Option(..., help="CSV: loan_id, risk_score, risk_tier, segment, strategy."),
    policy: Path | None = typer.Option(None, help="Strategy policy file. Default: shipped."),
    strategy_model: Path | None = typer.Option(None, help=STRATEGY_MODEL_HELP),
    partitions: int = typer.Option(
        DEFAULT_PARTITIONS, min=1, help="Partition count of the input topic to reproduce."
    ),
    changes: Path | None = typer.Option(None, help="Also write every StrategyChanged (CSV)."),
    topic: str = typer.Option(_T.events, help="Input topic name recorded in the outputs."),
    loans: int = typer.Option(1000, min=1, help="synthetic: loans of the book (as `generate`)."),
    seed: int = typer.Option(0, help="synthetic: random seed of the book (as `generate`)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    closed_retention_days: float = typer.Option(180.0, min=0.0, help=RETENTION_HELP),
) -> None:
    """Batch-score a history exactly as the stream would (the reference for `serve`)."""
    from consumer.reference import score_events, write_changes_csv, write_loans_csv

    bundle, policy_obj = _load_model_and_policy(model, policy, strategy_model)
    events = _read_events(source, input_path, loans, seed)
    with _progress(enabled=not as_json) as on_progress:
        result = score_events(
            events,
            bundle,
            policy_obj,
            partitions,
            topic,
            progress=on_progress,
            closed_retention_ms=closed_retention_days * 86_400_000,
        )
    write_loans_csv(result, out)
    if changes:
        write_changes_csv(result, changes)
    _summary(result, out, as_json)


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    """A progress bar on stderr (events scored, rate, ETA); None when disabled."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("scoring"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("events"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("score", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _read_events(source: Source, input_path: Path | None, loans: int, seed: int) -> Any:
    if source is Source.synthetic:
        # The finite book `generate --loans N --seed S` writes (the live stream of `produce
        # --source synthetic` never ends and starts at the wall-clock time).
        from models.data.synthetic import generate_book

        return generate_book(loans, seed)[1]
    if input_path is None:
        fail(f"--source {source.value} needs --input PATH")
    from models.data.adapters import AdapterError, read_history

    try:
        return read_history(source.value, input_path).events
    except (AdapterError, FileNotFoundError) as error:
        fail(str(error))


def _summary(result: Any, out: Path, as_json: bool) -> None:
    from collections import Counter

    from rich.console import Console
    from rich.table import Table

    mix = Counter(s.strategy for s in result.loans.values())
    dlq = Counter(d.reason for d in result.dead_letters)
    payload = {
        "events": result.events,
        "loans": len(result.loans),
        "strategy_changes": len(result.changes),
        "alerts": len(result.alerts),
        "dlq": dict(dlq),
        "strategy_mix": dict(mix),
        "out": str(out),
    }
    if as_json:
        print_json(payload)
        return
    table = Table("", "", title="score summary", show_header=False)
    for key in ("events", "loans", "strategy_changes", "alerts"):
        table.add_row(key.replace("_", " "), f"{payload[key]:,}")
    for name, count in sorted(mix.items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {name}", f"{count:,}")
    for reason, count in sorted(dlq.items()):
        table.add_row(f"dlq {reason}", f"{count:,}")
    table.add_row("written", str(out))
    Console(stderr=True).print(table)
