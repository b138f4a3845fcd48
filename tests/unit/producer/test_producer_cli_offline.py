"""`loan-recovery produce` without a broker: a bad properties file is named with the fix, dry runs
need their paths, and a dry-run file replays to the same events."""

from __future__ import annotations

import json
from pathlib import Path

import fastavro
from cli_runner import run_cli

from schemas.events import with_defaults


def test_bad_properties_file_is_named_with_the_fix(tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text("bootstrap.servers=localhost:1\nacks=1\n")
    result = run_cli("produce", "--source", "events", "--input", "x", "--kafka-config", str(props))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: --kafka-config {props}: acks must stay 'all' (no silently lost events)"
    )


def test_dry_run_needs_out_and_history_needs_input(tmp_path: Path) -> None:
    result = run_cli("produce", "--source", "seed", "--dry-run")
    assert result.returncode == 2 and "--dry-run needs --out" in result.stderr
    result = run_cli("produce", "--source", "seed", "--dry-run", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "--source seed needs --input" in result.stderr


def test_dry_run_file_replays_to_the_same_events(tmp_path: Path, synthetic_files) -> None:
    from models.data.adapters import read_history

    out = tmp_path / "book.avro"
    result = run_cli(
        "produce",
        "--source",
        "seed",
        "--input",
        str(synthetic_files["csv"]),
        "--dry-run",
        "--out",
        str(out),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["acknowledged"] == synthetic_files["events"]
    with open(out, "rb") as handle:
        assert len(list(fastavro.reader(handle))) == synthetic_files["events"]

    def ordered(events: list) -> list:
        return sorted(events, key=lambda e: (e["loan_id"], e["occurred_at"], e["event_id"]))

    from_file = read_history("events", out).events
    expected = [with_defaults(e) for e in read_history("seed", synthetic_files["csv"]).events]
    assert ordered(from_file) == ordered(expected)
