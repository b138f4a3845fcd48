"""Every metric the Grafana dashboard and the alert rules query exists on a live scorer.

The scorer is the real thing: `loan-recovery serve` as a subprocess on the test broker, with
the session's model bundle (``trained_model``: `loan-recovery generate` + `loan-recovery train`
on a small synthetic book); a synthetic book's events are produced to its input topic (plus
one undecodable record, so the DLQ metrics have samples too), and `/metrics` is scraped once
the scorer has processed them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from confluent_kafka import Producer
from deploy_contract import (
    ALERTS,
    PROMETHEUS_BUILTINS,
    ROOT,
    dashboard_queries,
    promql_metric_names,
)
from prometheus_client.parser import text_string_to_metric_families

from loan_recovery.broker import free_port
from producer.admin import create_topics
from schemas.topics import Topics


def alert_queries() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"]}


def exposed_names(exposition: str) -> set[str]:
    """Every series name a scrape offers: samples, plus the names a declared family without
    samples yet (a labelled counter before its first increment) will have."""
    names = set()
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_sum", "_count"],
        "summary": ["_sum", "_count", ""],
        "gauge": [""],
        "info": ["_info"],
    }
    for family in text_string_to_metric_families(exposition):
        names |= {s.name for s in family.samples}
        names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    return names


# -- the live scorer ---------------------------------------------------------------------------


@pytest.fixture
def live_scorer(
    bootstrap_servers: str, trained_model: Path, unique_name, tmp_path: Path
) -> Iterator[dict]:
    """`loan-recovery serve` on its own topics and metrics port; stopped afterwards."""
    topics = Topics(
        events=unique_name("events"),
        strategy_changes=unique_name("changes"),
        risk_alerts=unique_name("alerts"),
        dlq=unique_name("dlq"),
        app_id=unique_name("app"),
    )
    create_topics(bootstrap_servers, topics, partitions=3)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "loan_recovery.cli",
        "serve",
        "--model",
        str(trained_model),
        "--bootstrap-servers",
        bootstrap_servers,
        "--metrics-port",
        str(port),
        "--input-topic",
        topics.events,
        "--strategy-topic",
        topics.strategy_changes,
        "--alerts-topic",
        topics.risk_alerts,
        "--dlq-topic",
        topics.dlq,
        "--app-id",
        topics.app_id,
    ]
    log = open(tmp_path / "scorer.log", "wb")  # noqa: SIM115 -- closed below, after the process
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: _get(base + "/healthz"), process, tmp_path / "scorer.log", 90)
        yield {"base": base, "topics": topics, "process": process}
    finally:
        _stop(process)
        log.close()


def _get(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _wait_for(ready, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the scorer exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.3)
    pytest.fail(f"the scorer was not ready in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: the scorer and its children
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _events_processed(base: str) -> float:
    text = requests.get(base + "/metrics", timeout=5).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "loanrec_events_total"
    )


def test_every_dashboard_and_alert_metric_is_exported_by_the_live_scorer(
    bootstrap_servers: str, live_scorer
) -> None:
    from models.data.synthetic import generate_book
    from producer.engine import EventProducer

    _, events, _ = generate_book(150, seed=21)
    topic = live_scorer["topics"].events
    summary = EventProducer({"bootstrap.servers": bootstrap_servers}, topic).run(events)
    assert summary.ok, summary.first_error
    garbage = Producer({"bootstrap.servers": bootstrap_servers})
    garbage.produce(topic, b"\x00not avro", b"L-garbage")  # -> DLQ, reason bad_header
    garbage.flush(10)

    base = live_scorer["base"]
    _wait_for(
        lambda: _events_processed(base) >= len(events) + 1,
        live_scorer["process"],
        Path(os.devnull),
        120,
    )
    exposition = requests.get(base + "/metrics", timeout=5).text
    exported = exposed_names(exposition) | PROMETHEUS_BUILTINS

    missing = {}
    for title, queries in dashboard_queries().items():
        for query in queries:
            if unknown := promql_metric_names(query) - exported:
                missing[f"dashboard panel {title!r}: {query}"] = sorted(unknown)
    for alert, query in alert_queries().items():
        if unknown := promql_metric_names(query) - exported:
            missing[f"alert {alert}: {query}"] = sorted(unknown)
    assert not missing, json.dumps(missing, indent=2)

    # The numbers behind the panels are live, not just declared.
    assert requests.get(base + "/readyz", timeout=5).status_code == 200
    assert _events_processed(base) >= len(events) + 1
    assert "loanrec_dlq_total{" in exposition and "loanrec_model_info{" in exposition
