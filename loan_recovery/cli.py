"""The ``loan-recovery`` command line (ARCHITECTURE.md §9). Each command group lives in its own
module under ``loan_recovery.commands``; this file only wires them together."""

from __future__ import annotations

import typer

from loan_recovery.commands import broker, dlq, explain, models, produce, serve, strategy, topics

app = typer.Typer(
    name="loan-recovery",
    help="Streaming early-warning scorer and recovery-strategy engine for loan collections.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(broker.app, name="broker")
app.add_typer(topics.app, name="topics")
app.add_typer(dlq.app, name="dlq")
models.register(app)
produce.register(app)
serve.register(app)
explain.register(app)
strategy.register(app)

if __name__ == "__main__":
    app()
