"""Shared fixtures. Integration tests talk to a real Apache Kafka broker:

1. ``KAFKA_BOOTSTRAP_SERVERS`` if set (an existing broker), else
2. testcontainers' Kafka if a Docker engine answers, else
3. the project's local KRaft broker (``loan_recovery.broker``), started in a temp data dir
   and stopped when the session ends.

``tests/unit/`` never touches a broker and ``tests/integration/`` does; a test that asks for
the broker is marked ``integration`` here, and one under ``tests/unit/`` that does is a
collection error, so ``pytest tests/unit`` (CI's second interpreter) stays broker-free.
Test files live one level below ``unit/`` (``unit/models/``, ``unit/consumer/``, ...): pytest
puts a test file's folder on ``sys.path``, and ``unit/`` itself holds folders named like the
packages, which would shadow them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

# Fixtures that start or reach a Kafka broker: a test using one, directly or through another
# fixture, is an integration test.
BROKER_FIXTURES = frozenset({"bootstrap_servers", "sasl_broker"})
UNIT_DIR = Path(__file__).resolve().parent / "unit"
# The broker modules that take longest, longest first (measured with --durations): `make test`
# runs the broker tests on two workers, a module per worker in collection order, so a long
# module collected last would run alone at the end.
SLOWEST_FIRST = (
    "test_stream_outage.py",
    "test_stream_eos.py",
    "test_stream_delivery_errors.py",
)


def _slow_rank(item: pytest.Item) -> int:
    name = Path(item.path).name
    return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_slow_rank)  # stable: each module keeps its own order
    misplaced = []
    for item in items:
        if BROKER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
            if UNIT_DIR in Path(item.path).resolve().parents:
                misplaced.append(item.nodeid)
    if misplaced:
        raise pytest.UsageError(
            f"{len(misplaced)} test(s) under tests/unit/ use the broker; move them to "
            f"tests/integration/: {', '.join(misplaced[:5])}"
        )


def _docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def bootstrap_servers() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.0").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from loan_recovery.broker import LocalBroker

    data_dir = Path(tempfile.mkdtemp(prefix="loanrec-test-broker-"))
    broker = LocalBroker(data_dir)
    status = broker.start()
    try:
        yield status.bootstrap_servers
    finally:
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Unique topic / group names per test, so tests never see each other's data."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_topic(bootstrap_servers: str, unique_name) -> Callable[..., str]:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})

    def create(prefix: str = "t", partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = unique_name(prefix)
        futures = admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])
        futures[name].result(timeout=30)
        return name

    return create


def _run_cli(*args: str, timeout: float = 600) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "loan_recovery.cli", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"loan-recovery {' '.join(args)}:\n{result.stderr[-3000:]}"


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> Path:
    """A model bundle that the real CLI (`generate` + `train`) fitted on a small synthetic book;
    trained once per session and shared by every test that needs a model."""
    out = tmp_path_factory.mktemp("trained-model")
    _run_cli("generate", "--loans", "600", "--seed", "7", "--out", str(out / "book"))
    (seed_csv,) = (out / "book").glob("*.csv")
    _run_cli("train", "--source", "seed", "--input", str(seed_csv), "--out", str(out / "model"))
    return out / "model"


@pytest.fixture(scope="session")
def bundle(trained_model: Path):
    """The trained bundle, loaded (``models.serving.bundle.ModelBundle``)."""
    from models.serving.bundle import ModelBundle

    return ModelBundle.load(trained_model)


@pytest.fixture(scope="session")
def policy():
    """The shipped default policy."""
    from models.serving.policy import Policy

    return Policy.load(None)


@pytest.fixture(scope="module")
def synthetic_files(tmp_path_factory) -> dict[str, Path]:
    """A synthetic book from the project's generator, as a seed CSV and as an event log."""
    from models.data.adapters import write_jsonl
    from models.data.synthetic import generate_book

    out = tmp_path_factory.mktemp("book")
    frame, events, _ = generate_book(300, seed=4)
    frame.to_csv(out / "book.csv", index=False)
    with open(out / "events.jsonl", "w") as handle:
        write_jsonl(events, handle)
    return {"csv": out / "book.csv", "jsonl": out / "events.jsonl", "events": len(events)}


@pytest.fixture(scope="session")
def treatment_model(tmp_path_factory) -> Path:
    """A treatment-model bundle (``models.strategy.bundle``) fitted on a small simulated
    randomised log (library calls, 20 trees per strategy: a few seconds), with the value
    hysteresis recorded as `train-strategy` records it."""
    from models.serving.policy import Policy
    from models.strategy.bundle import write_treatment_bundle
    from models.strategy.decision_log import DecisionLog
    from models.strategy.simulator import Book
    from models.strategy.treatment import TreatmentModel

    book = Book.generate(3000, seed=21, policy=Policy.load(None))
    out = book.run(book.random_choice())
    log = DecisionLog(
        np.array(book.loan_ids),
        book.x,
        out.choice.strategy,
        out.choice.propensity,
        out.net,
        out.recovered,
        out.cost,
        book.horizon,
    )
    directory = tmp_path_factory.mktemp("treatment") / "model"
    model = TreatmentModel(n_estimators=20).learn(log)
    write_treatment_bundle(directory, model, {"value_hysteresis": 25.0})
    return directory
