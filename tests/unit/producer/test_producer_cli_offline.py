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


def _synthetic_dry_run(tmp_path: Path, *flags: str) -> list[dict]:
    out = tmp_path / f"live{len(flags)}.avro"
    result = run_cli(
        "produce",
        "--source",
        "synthetic",
        "--loans",
        "100",
        "--seed",
        "3",
        "--months-per-second",
        "100000",
        "--limit",
        "4000",
        "--dry-run",
        "--out",
        str(out),
        "--json",
        *flags,
    )
    assert result.returncode == 0, result.stderr
    with open(out, "rb") as handle:
        return list(fastavro.reader(handle))


def test_guardrail_events_flag_adds_holds_calls_and_time_zones(tmp_path: Path) -> None:
    def kinds(events: list[dict]) -> dict[str, int]:
        found = {"SET": 0, "RELEASE": 0, "CALL": 0, "time_zone": 0, "jurisdiction": 0}
        for e in events:
            body = e["body"]
            if body.get("hold"):
                found[body["hold"]["action"]] += 1
            if body.get("channel") == "CALL":
                found["CALL"] += 1
            if body.get("time_zone"):
                found["time_zone"] += 1
            if body.get("jurisdiction"):
                found["jurisdiction"] += 1
        return found

    plain = kinds(_synthetic_dry_run(tmp_path))
    assert set(plain.values()) == {0}  # off by default
    events = _synthetic_dry_run(tmp_path, "--guardrail-events")
    found = kinds(events)
    assert all(count > 0 for count in found.values()), found
    assert sum(1 for e in events if set(e["body"]) == {"reason"}) > 0  # some loans closed
    assert found["RELEASE"] <= found["SET"]
    # Still one event-time-ordered stream, nothing for a loan after it closed, and a hold is
    # released only after it was set (what the scorer would otherwise dead-letter).
    assert [e["occurred_at"] for e in events] == sorted(e["occurred_at"] for e in events)
    closed: set[str] = set()
    held: set[str] = set()
    for e in events:
        assert e["loan_id"] not in closed, e
        hold = e["body"].get("hold")
        if hold and hold["action"] == "SET":
            held.add(e["loan_id"])
        elif hold:
            assert e["loan_id"] in held, e
        if set(e["body"]) == {"reason"}:  # LoanClosed
            closed.add(e["loan_id"])

    result = run_cli("produce", "--source", "seed", "--input", "x", "--guardrail-events")
    assert result.returncode == 2 and "--guardrail-events is for --source synthetic" in (
        result.stderr
    )
