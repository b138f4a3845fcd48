"""Scorer settings (``consumer.config``) that the guarantees and fast restarts rest on."""

from __future__ import annotations

from pathlib import Path

from consumer.config import ServeConfig


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
    assert ChangelogRestorer.restore.__defaults__[-1] == RESTORE_TIMEOUT_S
