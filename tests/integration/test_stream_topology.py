"""The scorer refuses a topic layout its correctness cannot survive (consumer.topology): an
uncompacted changelog at start, and input partitions added while it runs (a loan's Murmur2
partition depends on the count, so its events would stop meeting its state)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
)
from test_stream_crash import config, new_topics
from test_stream_eos import PARTITIONS, encoded, produce

from consumer.app import ScorerApp
from consumer.errors import ConfigError, FatalError

pytestmark = pytest.mark.integration


def load(model: Path) -> tuple:
    from models.serving.bundle import ModelBundle
    from models.serving.policy import Policy

    return ModelBundle.load(model), Policy.load(None)


def test_an_uncompacted_changelog_is_refused_with_the_fix(
    bootstrap_servers: str, trained_model: Path, unique_name
) -> None:
    topics = new_topics(bootstrap_servers, unique_name("topo-compact"))
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        topics.changelog,
        incremental_configs=[
            ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)
    app = ScorerApp(config(bootstrap_servers, trained_model, topics, "topo"), *load(trained_model))
    with pytest.raises(ConfigError) as refused:
        app.run()
    message = str(refused.value)
    assert f"{topics.changelog} has cleanup.policy=delete" in message
    assert "cleanup.policy=compact" in message  # the fix


def test_input_partitions_added_while_running_stop_the_scorer(
    bootstrap_servers: str, trained_model: Path, unique_name
) -> None:
    from models.data.synthetic import generate_book

    topics = new_topics(bootstrap_servers, unique_name("topo-grow"))
    produce(bootstrap_servers, topics.events, encoded(generate_book(50, seed=5)[1]))
    cfg = config(bootstrap_servers, trained_model, topics, "topo", topology_check_s=0.5)
    cfg.exit_when_idle_s = None  # only the layout check may end it
    app = ScorerApp(cfg, *load(trained_model))
    raised: list[BaseException] = []

    def run() -> None:
        try:
            app.run()
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while app.processed == 0 and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.1)
    assert app.processed > 0 and thread.is_alive(), raised
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    admin.create_partitions([NewPartitions(topics.events, PARTITIONS + 1)])[topics.events].result(
        timeout=30
    )
    thread.join(60)
    if thread.is_alive():
        app.stopping = True
        thread.join(30)
        pytest.fail("the scorer kept running after the input gained a partition")
    assert raised and isinstance(raised[0], FatalError), raised
    assert f"{topics.events} went from {PARTITIONS} to {PARTITIONS + 1} partitions" in str(
        raised[0]
    )
