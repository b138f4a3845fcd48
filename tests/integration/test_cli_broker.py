"""The CLI surface and the local broker's lifecycle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loan_recovery.cli import app

CLI = [sys.executable, "-m", "loan_recovery.cli"]


def _subcommands() -> list[list[str]]:
    import typer.main

    group = typer.main.get_command(app)
    paths = []
    for name, command in group.commands.items():
        paths.append([name])
        for sub in getattr(command, "commands", {}):
            paths.append([name, sub])
    return paths


def test_help_describes_every_command() -> None:
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0 and "broker" in top.output
    for path in _subcommands():
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Usage" in result.output and "--help" in result.output, path


def _java_pids_for(data_dir: Path) -> list[str]:
    found = subprocess.run(
        ["pgrep", "-f", f"{data_dir}/server.properties"], capture_output=True, text=True
    )
    return found.stdout.split()


@pytest.mark.integration
def test_broker_start_status_stop(tmp_path: Path) -> None:
    data_dir = tmp_path / "broker"
    run = lambda *args: subprocess.run(
        [*CLI, "broker", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ},
    )
    try:
        started = run("start")
        assert started.returncode == 0, started.stderr
        line = started.stdout.strip().splitlines()[-1]
        assert line.startswith("bootstrap.servers=127.0.0.1:")
        again = run("start")
        assert again.stdout.strip().splitlines()[-1] == line and "already running" in again.stderr
        status = run("status")
        assert status.returncode == 0 and line in status.stdout
        assert len(_java_pids_for(data_dir)) == 1
    finally:
        stopped = run("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert _java_pids_for(data_dir) == []
    assert run("status").returncode == 1


def test_commands_without_a_broker_say_how_to_start_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LOANREC_BOOTSTRAP_SERVERS"}
    env["LOANREC_CACHE_DIR"] = str(tmp_path)  # no local broker there
    result = subprocess.run(
        [*CLI, "topics", "create"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode != 0
    assert "loan-recovery broker start" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
