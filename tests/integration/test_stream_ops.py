"""Operating `loan-recovery serve`: probes, SIGHUP reload of the early-warning and treatment
bundles (a bad one keeps both old ones; a good pair shows its versions on the output),
graceful SIGTERM, and fencing of a second instance with the same id (clear message, exit 1)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import requests
from test_stream_eos import PARTITIONS, Scorer, encoded, produce, read_all

from producer.admin import create_topics
from schemas import AvroSerde
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
    bootstrap: str,
    model: Path,
    topics: Topics,
    instance: str,
    tmp_path: Path,
    started: list,
    **flags: str,
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
        {"--exit-when-idle": "600", **flags},
    )
    started.append(scorer)
    return scorer


def get(scorer: Scorer, path: str) -> int:
    try:
        return requests.get(f"http://127.0.0.1:{scorer.port}{path}", timeout=2).status_code
    except requests.RequestException:
        return 0


def label(scorer: Scorer, metric: str) -> str:
    """The ``version`` label of an info gauge (``loanrec_model_info``, ``loanrec_policy_info``)."""
    (labels,) = {ls for (name, ls), _ in scorer.samples().items() if name == metric}
    return dict(labels)["version"]


def versions_of(bootstrap: str, topics: Topics, loans: set[str]) -> set[tuple[str, str]]:
    """(model_version, policy_version) of the committed StrategyChanged records of ``loans``
    (every loan's first decision is a change: at least one each)."""
    serde = AvroSerde("StrategyChanged")
    records = [serde.decode(m.value()) for m in read_all(bootstrap, topics.strategy_changes, 1)]
    mine = [r for r in records if r["loan_id"] in loans]
    assert {r["loan_id"] for r in mine} == loans
    return {(r["model_version"], r["policy_version"]) for r in mine}


def test_sighup_reload_probes_and_graceful_stop(
    bootstrap_servers: str,
    trained_model: Path,
    treatment_model: Path,
    topics: Topics,
    small_events: list,
    tmp_path: Path,
) -> None:
    from models.strategy.bundle import load_treatment_bundle, write_treatment_bundle

    model, treatment, newer = tmp_path / "model", tmp_path / "treatment", tmp_path / "newer"
    shutil.copytree(trained_model, model)
    shutil.copytree(treatment_model, treatment)
    # The same forests under a new content version (the value hysteresis is part of it).
    newer_version = write_treatment_bundle(
        newer, load_treatment_bundle(treatment_model), {"value_hysteresis": 40.0}
    )
    loans = sorted({e["loan_id"] for e in small_events})
    before, after = set(loans[: len(loans) // 2]), set(loans[len(loans) // 2 :])
    started: list[Scorer] = []
    try:
        scorer = start(
            bootstrap_servers,
            model,
            topics,
            "ops",
            tmp_path,
            started,
            **{"--strategy-model": str(treatment)},
        )
        scorer.wait_for(lambda: get(scorer, "/readyz") == 200, 90, "ready")
        assert get(scorer, "/healthz") == 200 and get(scorer, "/nope") == 404
        version, old_policy = (
            label(scorer, "loanrec_model_info"),
            label(scorer, "loanrec_policy_info"),
        )

        # A good new treatment bundle with a broken early-warning bundle: both old ones stay.
        metadata = model / "metadata.json"
        original = metadata.read_bytes()
        metadata.write_bytes(original.replace(b'"', b"'", 1))  # no longer valid JSON
        shutil.rmtree(treatment)
        shutil.copytree(newer, treatment)
        os.kill(scorer.process.pid, signal.SIGHUP)
        scorer.wait_for(lambda: "model_reload_failed" in scorer.log_text(), 30, "reload failure")
        assert '"failed": "--model"' in scorer.log_text()
        assert get(scorer, "/healthz") == 200  # still serving, with the old models
        produce(bootstrap_servers, topics.events, encoded(
            [e for e in small_events if e["loan_id"] in before]
        ))  # fmt: skip
        scorer.wait_for(
            lambda: (
                scorer.total("loanrec_events_total")
                >= sum(e["loan_id"] in before for e in small_events)
            ),
            60,
            "events scored by the old models",
        )
        assert label(scorer, "loanrec_policy_info") == old_policy
        assert versions_of(bootstrap_servers, topics, before) == {(version, old_policy)}

        # Both load: both are swapped in, and the decisions after it carry the new versions.
        metadata.write_bytes(original)
        os.kill(scorer.process.pid, signal.SIGHUP)
        scorer.wait_for(lambda: "model_reloaded" in scorer.log_text(), 30, "reload")
        new_policy = label(scorer, "loanrec_policy_info")
        assert new_policy != old_policy and new_policy.endswith(f"+{newer_version}")
        assert label(scorer, "loanrec_model_info") == version  # the same bundle, reloaded
        produce(bootstrap_servers, topics.events, encoded(
            [e for e in small_events if e["loan_id"] in after]
        ))  # fmt: skip
        scorer.wait_for(
            lambda: scorer.total("loanrec_events_total") >= len(small_events),
            60,
            "events scored by the new models",
        )
        assert versions_of(bootstrap_servers, topics, after) == {(version, new_policy)}

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
