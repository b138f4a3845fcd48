"""Options and error handling shared by commands."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer

BOOTSTRAP_HELP = (
    "Kafka bootstrap servers (HOST:PORT,...). Default: $LOANREC_BOOTSTRAP_SERVERS, "
    "else the local broker started by `loan-recovery broker start`."
)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear line to stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def print_json(payload: Any) -> None:
    json.dump(payload, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def bootstrap_with_properties(explicit: str | None, user: dict[str, str]) -> str:
    """--bootstrap-servers, then $LOANREC_BOOTSTRAP_SERVERS, then the properties file's
    bootstrap.servers, then the local broker (or one clear line saying how to start one)."""
    import os

    chosen = (
        explicit or os.environ.get("LOANREC_BOOTSTRAP_SERVERS") or user.get("bootstrap.servers")
    )
    return chosen or bootstrap_or_fail(None)


def bootstrap_or_fail(explicit: str | None) -> str:
    from loan_recovery.broker import BrokerError, resolve_bootstrap_servers

    try:
        return resolve_bootstrap_servers(explicit)
    except BrokerError as error:
        fail(str(error))
