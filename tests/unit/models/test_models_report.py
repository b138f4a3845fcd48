"""The analysts' report opens in headless Chromium with no console messages, every section
renders its plotly figure (SVG in the live DOM), and it needs no network."""

from __future__ import annotations

import re
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from models.data.adapters import seed_frame_history
from models.data.synthetic import generate_book, with_guardrail_events
from models.report.guardrails import GuardrailSummary, guardrail_summary
from models.report.render import SECTIONS, write_report
from models.serving.bundle import ModelBundle
from models.serving.policy import Policy
from models.strategy.outcome_table import strategy_segment_table
from models.strategy.outcomes import seed_outcomes
from models.training.early_warning import train_bundle
from models.training.population import input_data

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: any network fetch would fail
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=15000",
]


# The shape `loan-recovery evaluate --json` prints (tests/unit/models/test_strategy_cli.py).
EVALUATION = {
    "candidate": "learned",
    "decisions": 1000,
    "propensities": "logged",
    "logged_policy_net_per_decision": 3120.5,
    "estimates": {
        "ips": {"value": 4563.0, "low": 4406.0, "high": 4734.0},
        "dr": {"value": 4566.0, "low": 4466.0, "high": 4669.0},
    },
    "strategy_mix": {
        "learned": {"CALL": 0.6, "LEGAL_NOTICE": 0.4},
        "table": {"CALL": 0.3, "LEGAL_NOTICE": 0.7},
    },
}


@pytest.fixture(scope="module")
def guarded_book() -> list[dict]:
    """A small book with holds set and released, calls, time zones and jurisdictions."""
    _, events, _ = generate_book(300, seed=8)
    return with_guardrail_events(events, seed=8, hold_rate=0.4)


@pytest.fixture(scope="module")
def report_and_guardrails(tmp_path_factory, guarded_book) -> tuple[Path, GuardrailSummary]:
    out = tmp_path_factory.mktemp("report")
    frame, _, _ = generate_book(1500, seed=21)
    history = seed_frame_history(frame)
    train_bundle(history, out / "model", n_estimators=30)
    bundle = ModelBundle.load(out / "model")
    segments = input_data(bundle, history)["segment_by_loan"]
    table = strategy_segment_table(seed_outcomes(frame, Policy.load(None).costs), segments)
    summary = guardrail_summary(guarded_book, bundle, Policy.load(None))
    path = write_report(
        bundle, out / "report.html", outcomes=table, evaluation=EVALUATION, guardrails=summary
    )
    return path, summary


@pytest.fixture(scope="module")
def report(report_and_guardrails) -> Path:
    return report_and_guardrails[0]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def test_report_is_self_contained(report: Path) -> None:
    text = report.read_text()
    assert not re.search(r"<script[^>]+src=", text)  # plotly.js is inline, nothing fetched
    assert "Plotly" in text and len(text) > 3_000_000


def test_report_renders_every_section_without_console_messages(
    report: Path, tmp_path: Path
) -> None:
    result = chromium(tmp_path, "--dump-dom", report.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, "\n".join(console)  # errors, warnings, uncaught exceptions
    dom = result.stdout
    parts = re.split(r"<section id=\"", dom)[1:]
    rendered = {part.split('"', 1)[0]: part for part in parts}
    assert list(rendered) == list(SECTIONS)
    for name in SECTIONS[1:]:
        section = rendered[name]
        # plotly replaces each figure's <div> with a plot-container holding its SVG layers.
        assert 'class="plot-container plotly"' in section, f"{name}: no plot rendered"
        assert section.count('class="main-svg"') >= 2, f"{name}: no SVG drawn"
    assert "ROC AUC" in rendered["summary"] and "silhouette" in rendered["summary"]


def _png_size_and_colours(path: Path) -> tuple[int, int, int]:
    """Width, height and (roughly) the number of distinct pixel rows of a PNG screenshot, with
    the standard library only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = len(raw) // height
    rows = {raw[i * stride + 1 : (i + 1) * stride] for i in range(height)}
    return width, height, len(rows)


def test_screenshot_shows_the_plots(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    result = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,5000", report.as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    width, height, distinct_rows = _png_size_and_colours(shot)
    assert (width, height) == (1280, 5000)
    # A blank or text-only page has few distinct pixel rows; eight rendered charts have many.
    assert distinct_rows > 1500, distinct_rows


def test_report_shows_point_in_time_quality_and_fairness(report: Path) -> None:
    text = report.read_text()
    for heading in (
        "Held-out snapshots by months on book",
        "Flagging before the write-off",
        "Fairness by gender",
        "Fairness by age_band",
        "Model inputs",
    ):
        assert heading in text, heading
    assert "<td>30+ days past due</td>" in text and "<td>62+</td>" in text
    inputs = text.split("<h3>Model inputs")[1].split("</p>")[0]
    assert "gender" not in inputs and "legal_action" not in inputs


def test_strategy_outcomes_state_the_estimate_is_observational(report: Path) -> None:
    section = report.read_text().split("<section id='strategy-outcomes'>")[1]
    section = section.split("</section>")[0]
    assert "Observational estimate" in section and "95% normal-approximation" in section
    cells = r"<tr><td>([A-Z_]+)</td><td>([A-Z_]+)</td><td>(\d+)</td><td>([^<]+)</td>"
    rows = re.findall(cells, section)
    # every labelled loan of the 1,500 is in one strategy x segment cell
    assert sum(int(n) for _, _, n, _ in rows) == 1500
    assert {s for s, _, _, _ in rows} >= {"CALL", "LEGAL_NOTICE", "NONE"}
    assert {g for _, g, _, _ in rows} <= {"HIGH_RISK", "OTHERS", "LOW_RISK"}
    for *_, n, cell in rows:  # "0.812 [0.780, 0.845]": the mean inside its interval
        if int(n) > 1:
            mean, low, high = map(float, re.findall(r"-?\d+\.\d+", cell))
            assert low <= mean <= high


def test_learned_policy_section_shows_values_with_intervals(report: Path) -> None:
    section = report.read_text().split("<section id='strategy-policy'>")[1]
    section = section.split("</section>")[0]
    assert "<td>doubly robust</td><td>4,566.00</td><td>[4,466.00, 4,669.00]</td>" in section
    assert "<td>inverse propensity (IPS)</td>" in section and "self-normalised" not in section
    assert "1,000 decisions" in section and "strategy-policy-plot-0" in section


def _events_under_hold(events: list[dict]) -> int:
    """Events after which their loan has an active hold: each is one decision the compliance
    hold changed (the policy never chooses HOLD itself), counted from the events alone."""
    active: dict[str, set[str]] = {}
    count = 0
    for event in events:
        body_type, body = event["body"]
        holds = active.setdefault(event["loan_id"], set())
        hold = body.get("hold") if body_type.endswith("CollectionAttempt") else None
        if hold is not None:
            (holds.add if hold["action"] == "SET" else holds.discard)(hold["reason"])
        count += bool(holds)
    return count


def test_guardrail_section_counts_interventions_by_rule(
    report_and_guardrails, guarded_book
) -> None:
    report, summary = report_and_guardrails
    text = report.read_text()
    assert "<section id='guardrails'>" in text
    section = text.split("<section id='guardrails'>")[1].split("</section>")[0]
    assert "guardrails-plot-0" in section
    by_rule = dict(re.findall(r"<tr><td>([a-z_]+)</td><td>([\d,]+)</td></tr>", section))
    emitted = re.findall(
        r"<tr><td>([a-z_]+)</td><td>([A-Z_]+)</td><td>([A-Z_]+)</td><td>([\d,]+)</td></tr>",
        section,
    )
    counts = {rule: int(n.replace(",", "")) for rule, n in by_rule.items()}
    # Independent of the code under test: one compliance-hold intervention per event applied
    # while its loan has a hold, and the hold sends HOLD whatever the policy wanted.
    assert counts["compliance_hold"] == _events_under_hold(guarded_book) > 0
    hold_rows = [(w, sent, int(n)) for rule, w, sent, n in emitted if rule == "compliance_hold"]
    assert hold_rows and all(sent == "HOLD" and w != "HOLD" for w, sent, _ in hold_rows)
    assert sum(n for *_, n in hold_rows) <= counts["compliance_hold"]
    # The section shows exactly the summary, and the summary what the replay emitted.
    assert counts == summary.decisions_by_rule
    shown = {(r, w, s): int(n.replace(",", "")) for r, w, s, n in emitted}
    assert shown == summary.emitted
    assert set(counts) >= {rule for rule, *_ in shown}
    assert f"{summary.events:,} events" in section


def test_guardrail_section_says_so_when_no_rule_acted() -> None:
    from models.report.render import _guardrails_html

    empty = GuardrailSummary(events=10, changes=3, decisions_by_rule={}, emitted={})
    assert "No guardrail changed any of the 10 decisions" in _guardrails_html(empty)
