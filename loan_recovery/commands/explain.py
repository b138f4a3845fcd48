"""``loan-recovery explain``: one loan's decisions and reasons, offline (ARCHITECTURE.md §9).

It prints the JSON document ``GET /loans/{loan_id}`` answers on a running scorer
(``consumer.lookup.loan_document``), computed by replaying the loan's partition through the
processor `score` and `serve` share, with the loan's complete decision history.

Example::

    loan-recovery explain --model out/model --source events --input out/book/events.jsonl \\
        --loan L00042
"""

from __future__ import annotations

from pathlib import Path

import typer

from loan_recovery.commands.common import fail, print_json
from loan_recovery.commands.serve import (
    STRATEGY_MODEL_HELP,
    Source,
    _load_model_and_policy,
    _read_events,
)
from schemas.topics import DEFAULT_PARTITIONS, Topics


def register(app: typer.Typer) -> None:
    app.command(name="explain")(explain)


def explain(
    model: Path = typer.Option(..., help="Model bundle directory."),
    source: Source = typer.Option(..., help="Input kind (as for `produce`)."),
    input_path: Path | None = typer.Option(None, "--input", help="File (seed/uci/events)."),
    loan: str = typer.Option(..., "--loan", help="The loan id to explain."),
    policy: Path | None = typer.Option(None, help="Strategy policy file. Default: shipped."),
    strategy_model: Path | None = typer.Option(None, help=STRATEGY_MODEL_HELP),
    partitions: int = typer.Option(
        DEFAULT_PARTITIONS, min=1, help="Partition count of the input topic to reproduce."
    ),
    topic: str = typer.Option(Topics().events, help="Input topic name recorded in the outputs."),
    loans: int = typer.Option(1000, min=1, help="synthetic: loans of the book (as `generate`)."),
    seed: int = typer.Option(0, help="synthetic: random seed of the book (as `generate`)."),
) -> None:
    """Print one loan's state, score, tier, segment, strategy, reasons and every decision the
    stream makes for it (JSON, as `GET /loans/{loan_id}` on `serve`)."""
    from consumer.reference import explain_loan

    bundle, policy_obj = _load_model_and_policy(model, policy, strategy_model)
    events = _read_events(source, input_path, loans, seed)
    document = explain_loan(events, bundle, policy_obj, loan, partitions, topic)
    if document is None:
        fail(f"unknown loan {loan!r}: no LoanOpened for it in the input")
    print_json(document)
