"""Operating `loan-recovery serve`: probes, SIGHUP model reload (a bad bundle keeps the old one),
graceful SIGTERM, and fencing of a second instance with the same id (clear message, exit 1)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import requests
from test_stream_eos import PARTITIONS, Scorer, encoded, produce

from producer.admin import create_topics
from schemas.topics import Topics

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(bootstrap_servers: str, unique_name) -> Topics:
    app = unique_name("ops")
    t = Topics(
        events=f"{app}.events",
        strategy_changes=f"{app}.changes",
        risk_alerts=f"{app}.alerts",
        dlq=f"{app}.dlq",
        app_id=app,
    )
    create_topics(bootstrap_servers, t, partitions=PARTITIONS)
    return t


@pytest.fixture
def small_events() -> list[dict]:
    from models.data.synthetic import generate_book

    return generate_book(40, seed=21)[1]


def start(
    bootstrap: str, model: Path, topics: Topics, instance: str, tmp_path: Path, started: list
) -> Scorer:
    properties = tmp_path / f"{instance}.properties"
    properties.write_text("session.timeout.ms=6000\nheartbeat.interval.ms=1000\n")
    scorer = Scorer(
        bootstrap,
        model,
        topics,
        instance,
        properties,
        tmp_path / f"{instance}-{len(started)}.log",
        {"--exit-when-idle": "600"},
    )
    started.append(scorer)
    return scorer


def get(scorer: Scorer, path: str) -> int:
    try:
        return requests.get(f"http://127.0.0.1:{scorer.port}{path}", timeout=2).status_code
    except requests.RequestException:
        return 0


def test_sighup_reload_probes_and_graceful_stop(
    bootstrap_servers: str,
    trained_model: Path,
    topics: Topics,
    small_events: list,
    tmp_path: Path,
) -> None:
    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    started: list[Scorer] = []
    try:
        scorer = start(bootstrap_servers, model, topics, "ops", tmp_path, started)
        scorer.wait_for(lambda: get(scorer, "/readyz") == 200, 90, "ready")
        assert get(scorer, "/healthz") == 200 and get(scorer, "/nope") == 404
        version = next(
            labels for (name, labels), _ in scorer.samples().items() if name == "loanrec_model_info"
        )

        metadata = model / "metadata.json"
        original = metadata.read_bytes()
        metadata.write_bytes(original.replace(b'"', b"'", 1))  # no longer valid JSON
        os.kill(scorer.process.pid, signal.SIGHUP)
        scorer.wait_for(lambda: "model_reload_failed" in scorer.log_text(), 30, "reload failure")
        assert get(scorer, "/healthz") == 200  # still serving, with the old model
        produce(bootstrap_servers, topics.events, encoded(small_events))
        scorer.wait_for(
            lambda: scorer.total("loanrec_events_total") >= len(small_events),
            60,
            "events scored by the old model",
        )

        metadata.write_bytes(original)
        os.kill(scorer.process.pid, signal.SIGHUP)
        scorer.wait_for(lambda: "model_reloaded" in scorer.log_text(), 30, "reload")
        assert (
            next(
                labels
                for (name, labels), _ in scorer.samples().items()
                if name == "loanrec_model_info"
            )
            == version
        )

        os.killpg(scorer.process.pid, signal.SIGTERM)
        assert scorer.wait_exit(30) == 0
        log = scorer.log_text()
        assert '"event": "stopped"' in log and '"event": "metrics_listening"' in log
    finally:
        for s in started:
            s.stop()


def test_a_second_instance_with_the_same_id_fences_the_first(
    bootstrap_servers: str,
    trained_model: Path,
    topics: Topics,
    small_events: list,
    tmp_path: Path,
) -> None:
    started: list[Scorer] = []
    try:
        first = start(bootstrap_servers, trained_model, topics, "twin", tmp_path, started)
        first.wait_for(lambda: get(first, "/readyz") == 200, 90, "first ready")
        second = start(bootstrap_servers, trained_model, topics, "twin", tmp_path, started)
        second.wait_for(lambda: get(second, "/readyz") == 200, 90, "second ready")
        deadline = time.monotonic() + 60
        while first.process.poll() is None and time.monotonic() < deadline:
            produce(bootstrap_servers, topics.events, encoded(small_events))  # work for both
            time.sleep(1)
        assert first.wait_exit(30) == 1
        log = first.log_text()
        assert "fenced" in log and "--instance-id" in log, log[-2000:]
        assert second.process.poll() is None  # the newer instance carries on
    finally:
        for s in started:
            s.stop()
