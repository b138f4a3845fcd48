"""Scorer settings (``consumer.config``) that the guarantees and fast restarts rest on."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from consumer.config import ConfigError, ServeConfig


def test_static_membership_comes_from_the_instance_id() -> None:
    config = ServeConfig("b:9092", Path("m"), instance_id="scorer-2")
    assert config.consumer_config()["group.instance.id"] == "scorer-2"
    assert config.producer_config()["transactional.id"].endswith("-scorer-2")
    assert "group.instance.id" not in config.restore_consumer_config()  # it joins no group
    dynamic = ServeConfig("b:9092", Path("m"), instance_id="scorer-2", static_membership=False)
    assert "group.instance.id" not in dynamic.consumer_config()


def test_max_poll_interval_outlasts_the_longest_restore() -> None:
    from consumer.config import RESTORE_TIMEOUT_S
    from consumer.recovery import ChangelogRestorer

    config = ServeConfig("b:9092", Path("m"))
    interval_s = int(config.consumer_config()["max.poll.interval.ms"]) / 1000
    # The loop does not poll the group consumer while it restores (consumer.recovery).
    assert interval_s > RESTORE_TIMEOUT_S
    timeout = inspect.signature(ChangelogRestorer.restore).parameters["timeout_s"].default
    assert timeout == RESTORE_TIMEOUT_S
    # The wait for the changelog to reflect the committed offset is inside that bound.
    assert ServeConfig("b:9092", Path("m"), restore_wait_s=RESTORE_TIMEOUT_S).restore_wait_s
    for wrong in (-1.0, RESTORE_TIMEOUT_S + 1, float("nan")):
        with pytest.raises(ConfigError, match="--restore-wait-s"):
            ServeConfig("b:9092", Path("m"), restore_wait_s=wrong)


def test_a_static_members_session_outlasts_the_outage_patience() -> None:
    # Shorter, a coordinator outage ends the session client-side and the rejoin fences the
    # scorer's own older member id (fatal; confluentinc/librdkafka#3437).
    session_ms = {
        patience: int(
            ServeConfig("b:9092", Path("m"), outage_patience_s=patience).consumer_config()[
                "session.timeout.ms"
            ]
        )
        for patience in (3.0, 300.0, 3600.0)
    }
    assert session_ms == {3.0: 63_000, 300.0: 360_000, 3600.0: 1_800_000}  # broker max
    dynamic = ServeConfig("b:9092", Path("m"), static_membership=False).consumer_config()
    assert "session.timeout.ms" not in dynamic  # librdkafka's 45 s: nothing to fence
    mine = ServeConfig(
        "b:9092", Path("m"), kafka_properties={"session.timeout.ms": "20000"}
    ).consumer_config()
    assert mine["session.timeout.ms"] == "20000"  # a --kafka-config value wins


def test_fetches_wait_briefly_for_a_batch_and_the_user_can_change_it() -> None:
    """The broker answers a fetch at 64 KiB or after 20 ms (fewer, bigger batches: each has a
    fixed cost); a --kafka-config file's values win."""
    config = ServeConfig("b:9092", Path("m")).consumer_config()
    assert (config["fetch.min.bytes"], config["fetch.wait.max.ms"]) == ("65536", "20")
    props = {"fetch.min.bytes": "1", "fetch.wait.max.ms": "5"}
    mine = ServeConfig("b:9092", Path("m"), kafka_properties=props).consumer_config()
    assert (mine["fetch.min.bytes"], mine["fetch.wait.max.ms"]) == ("1", "5")
