"""`make demo`: the whole pipeline on the local broker, end to end.

broker -> topics -> generate + train (if no bundle yet) -> `serve` -> `produce` a synthetic book
-> wait until the scorer has drained the stream -> summary (events, strategy mix, alerts, DLQ,
throughput) -> `report`. Every step is the public CLI, run as a subprocess, so the demo shows
exactly what a user would type.

Each run uses its own topics (``demo-<time>.*``), so re-running never mixes old events into
the new run. Outputs go to ``demo-out/``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("DEMO_OUT", ROOT / "demo-out"))
LOANS = int(os.environ.get("DEMO_LOANS", "2000"))
SEED = 7
CLI = [sys.executable, "-m", "loan_recovery.cli"]


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def cli(*args: str) -> None:
    print("$ loan-recovery " + " ".join(args), flush=True)
    subprocess.run([*CLI, *args], cwd=ROOT, check=True)


def start_broker() -> str:
    from loan_recovery.broker import LocalBroker

    data_dir = os.environ.get("DEMO_BROKER_DIR")  # default: the one `broker start` uses
    status = LocalBroker(Path(data_dir) if data_dir else None).start()
    print(f"bootstrap.servers={status.bootstrap_servers} (data dir {status.data_dir})")
    return status.bootstrap_servers


def ensure_model() -> Path:
    book, model = OUT / "book", OUT / "model"
    if not (book / "events.jsonl").exists():
        cli("generate", "--loans", str(LOANS), "--seed", str(SEED), "--out", str(book))
    if not (model / "metadata.json").exists():
        cli("train", "--source", "seed", "--input", str(book / "loans.csv"), "--out", str(model))
    else:
        print(f"using the existing bundle {model} (delete it to retrain)")
    return model


def start_scorer(model: Path, bootstrap: str, app: str, log: Path) -> tuple[subprocess.Popen, int]:
    args = [
        "serve",
        "--model",
        str(model),
        "--bootstrap-servers",
        bootstrap,
        "--metrics-port",
        "0",
        "--app-id",
        app,
        "--input-topic",
        f"{app}.events",
        "--strategy-topic",
        f"{app}.strategy-changes",
        "--alerts-topic",
        f"{app}.risk-alerts",
        "--dlq-topic",
        f"{app}.events.dlq",
        "--instance-id",
        "demo",
        "--exit-when-idle",
        "8",
    ]
    print("$ loan-recovery " + " ".join(args) + f"  > {log}", flush=True)
    process = subprocess.Popen(
        [*CLI, *args],
        cwd=ROOT,
        stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if '"metrics_listening"' in line:
                port = json.loads(line)["port"]
                print(f"scorer metrics: http://127.0.0.1:{port}/metrics")
                return process, port
        if process.poll() is not None:
            sys.exit(f"the scorer exited early; see {log}")
        time.sleep(0.3)
    os.killpg(process.pid, signal.SIGTERM)
    sys.exit(f"the scorer did not start; see {log}")


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
        text = response.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def wait_drained(process: subprocess.Popen, port: int) -> tuple[dict, float]:
    """Scrape until the scorer exits (it does after 8 s without input); the last scrape and
    the seconds between its first and last processed event."""
    last: dict = {}
    first_seen = last_change = None
    processed = 0.0
    while process.poll() is None:
        try:
            last = scrape(port)
        except OSError:
            break
        now = sum(last.get("loanrec_events_total", {}).values())
        if now > processed:
            first_seen = first_seen or time.monotonic()
            last_change = time.monotonic()
            processed = now
        time.sleep(0.5)
    process.wait(60)
    seconds = (last_change - first_seen) if first_seen and last_change else 0.0
    return last, seconds


def summary(metrics: dict, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    events = Counter()
    for labels, value in metrics.get("loanrec_events_total", {}).items():
        events[dict(labels)["outcome"]] += int(value)
    mix = {
        dict(ls)["segment"]: int(v) for ls, v in metrics.get("loanrec_loans_by_segment", {}).items()
    }
    tiers = {dict(ls)["tier"]: int(v) for ls, v in metrics.get("loanrec_loans_by_tier", {}).items()}
    changes = Counter()
    for labels, value in metrics.get("loanrec_strategy_changes_total", {}).items():
        changes[dict(labels)["to_strategy"]] += int(value)
    dlq = {dict(ls)["reason"]: int(v) for ls, v in metrics.get("loanrec_dlq_total", {}).items()}
    alerts = int(sum(metrics.get("loanrec_alerts_total", {}).values()))
    total = sum(events.values())
    table = Table("", "", title="demo summary", show_header=False)
    table.add_row(
        "events processed",
        f"{total:,} ({events['scored']:,} scored, "
        f"{events['dlq']:,} DLQ, {events['duplicate']:,} duplicates)",
    )
    table.add_row("throughput", f"{total / seconds:,.0f} events/s" if seconds else "-")
    table.add_row("early-warning alerts", f"{alerts:,}")
    table.add_row("loans by tier", ", ".join(f"{k} {v:,}" for k, v in sorted(tiers.items())))
    table.add_row("loans by segment", ", ".join(f"{k} {v:,}" for k, v in sorted(mix.items())))
    table.add_row(
        "strategy changes, by new strategy",
        ", ".join(f"{k} {v:,}" for k, v in changes.most_common()),
    )
    table.add_row("DLQ by reason", ", ".join(f"{k} {v:,}" for k, v in dlq.items()) or "none")
    Console().print(table)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    step("local Kafka broker")
    bootstrap = start_broker()
    app = time.strftime("demo-%Y%m%d-%H%M%S")
    step(f"topics {app}.* (6 partitions; the changelog compacted)")
    from producer.admin import create_topics
    from schemas.topics import Topics

    create_topics(
        bootstrap,
        Topics(
            events=f"{app}.events",
            strategy_changes=f"{app}.strategy-changes",
            risk_alerts=f"{app}.risk-alerts",
            dlq=f"{app}.events.dlq",
            app_id=app,
        ),
    )
    step("model")
    model = ensure_model()
    step("scorer")
    process, port = start_scorer(model, bootstrap, app, OUT / "scorer.log")
    try:
        step("replay the book")
        cli(
            "produce",
            "--source",
            "events",
            "--input",
            str(OUT / "book" / "events.jsonl"),
            "--bootstrap-servers",
            bootstrap,
            "--topic",
            f"{app}.events",
            "--no-progress",
        )
        step("scoring until the stream is drained")
        metrics, seconds = wait_drained(process, port)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
    if process.returncode != 0:
        sys.exit(f"the scorer failed ({process.returncode}); see {OUT / 'scorer.log'}")
    summary(metrics, seconds)
    step("report")
    cli("report", "--model", str(model), "--out", str(OUT / "report.html"))
    print(f"\nopen {OUT / 'report.html'}; the broker keeps running (`make broker-stop`)")


if __name__ == "__main__":
    main()
