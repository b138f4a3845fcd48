"""The topics' layout the scorer's correctness rests on, checked at start and while it runs.

A loan's state lives in the changelog partition numbered like its input partition, and the
batch reference assumes the producer's partition count; so the scorer refuses to run when

- the changelog's partition count differs from the input's (state would be restored into the
  wrong partition), or the strategy and alert topics' counts differ from it (the deployment was
  made by hand, not by ``loan-recovery topics create``);
- the input's partition count changes while it runs (adding partitions moves loans: the
  Murmur2 partition of a key depends on the count, so a loan's new events would meet no state);
- the changelog is not compacted (``cleanup.policy`` without ``compact``): retention would
  delete the only copy of a quiet loan's state.

``TopologyWatch`` re-reads the layout every ``every_s`` seconds from the loop's housekeeping
(one metadata request and one DescribeConfigs, about a millisecond on a local broker); a
broker it cannot reach is the outage handling's business (``consumer.checkpoint``), not a
topology problem, so an unreachable cluster skips the check.

Example::

    >>> from schemas.topics import Topics
    >>> t = Topics()
    >>> counts = {t.events: 6, t.strategy_changes: 6, t.risk_alerts: 6, t.dlq: 1, t.changelog: 3}
    >>> problems(TopicLayout(counts, "compact"), t, expected_partitions=6)[0].split(":")[0]
    'loan-recovery.loan-state-changelog has 3 partitions but loan.events has 6'
    >>> problems(TopicLayout({**counts, t.changelog: 6}, "compact"), t, expected_partitions=6)
    []
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource

from consumer.errors import ConfigError, FatalError
from schemas.topics import Topics

DEFAULT_CHECK_INTERVAL_S = 300.0


@dataclass(frozen=True)
class TopicLayout:
    partitions: dict[str, int]  # topic -> partition count, for the topics that exist
    changelog_cleanup_policy: str | None  # None: not read (the changelog is missing)


def read_layout(admin: AdminClient, topics: Topics, timeout_s: float = 10.0) -> TopicLayout:
    """The partition counts of the scorer's topics and the changelog's cleanup policy.
    Raises ``KafkaException`` when the cluster cannot answer within ``timeout_s``."""
    metadata = admin.list_topics(timeout=timeout_s)
    names = (topics.events, topics.strategy_changes, topics.risk_alerts, topics.dlq)
    counts = {
        name: len(metadata.topics[name].partitions)
        for name in (*names, topics.changelog)
        if name in metadata.topics and metadata.topics[name].error is None
    }
    policy = None
    if topics.changelog in counts:
        resource = ConfigResource(ConfigResource.Type.TOPIC, topics.changelog)
        configs = admin.describe_configs([resource])[resource].result(timeout=timeout_s)
        entry = configs.get("cleanup.policy")
        policy = entry.value if entry is not None else None
    return TopicLayout(counts, policy)


def problems(layout: TopicLayout, topics: Topics, expected_partitions: int | None) -> list[str]:
    """What is wrong with ``layout``, each naming the topic and the fix; empty if nothing.
    ``expected_partitions`` is the input's count when the scorer started (None at start)."""
    counts = layout.partitions
    found: list[str] = []
    required = (topics.events, topics.strategy_changes, topics.risk_alerts, topics.dlq)
    missing = [n for n in (*required, topics.changelog) if n not in counts]
    if missing:
        return [
            f"missing topics {', '.join(missing)}: run `loan-recovery topics create "
            f"--app-id {topics.app_id}`"
        ]
    n_in = counts[topics.events]
    if expected_partitions is not None and n_in != expected_partitions:
        found.append(
            f"{topics.events} went from {expected_partitions} to {n_in} partitions while the "
            "scorer ran: a loan's partition depends on the count, so its state no longer "
            "meets its events; restore the count or re-key into a new app id"
        )
    for name in (topics.changelog, topics.strategy_changes, topics.risk_alerts):
        if counts[name] != n_in:
            found.append(
                f"{name} has {counts[name]} partitions but {topics.events} has {n_in}: "
                "they must match (`loan-recovery topics create` makes them so)"
            )
    policy = layout.changelog_cleanup_policy or ""
    if "compact" not in policy.split(","):
        found.append(
            f"{topics.changelog} has cleanup.policy={policy or 'unknown'}: the changelog must "
            f"be compacted (kafka-configs --alter --entity-name {topics.changelog} "
            "--add-config cleanup.policy=compact)"
        )
    return found


class TopologyWatch:
    """Re-checks the layout every ``every_s`` seconds; raises ``FatalError`` on a problem."""

    def __init__(
        self,
        admin: AdminClient,
        topics: Topics,
        expected_partitions: int,
        every_s: float = DEFAULT_CHECK_INTERVAL_S,
    ) -> None:
        self.admin, self.topics = admin, topics
        self.expected_partitions, self.every_s = expected_partitions, every_s
        self.next_check = time.monotonic() + every_s

    def check_if_due(self, now: float) -> None:
        if now < self.next_check:
            return
        self.next_check = now + self.every_s
        try:
            layout = read_layout(self.admin, self.topics, timeout_s=5.0)
        except KafkaException:
            return  # unreachable: the checkpoint's outage handling decides what that means
        found = problems(layout, self.topics, self.expected_partitions)
        if found:
            raise FatalError("topic layout changed: " + "; ".join(found))


def start_watch(
    admin_config: dict[str, str], topics: Topics, every_s: float = DEFAULT_CHECK_INTERVAL_S
) -> TopologyWatch:
    """Check the layout once (``ConfigError`` naming every problem and its fix), then return
    the watch that keeps checking it against the input's partition count found now."""
    admin = AdminClient({**admin_config, "log_level": 0})
    try:
        layout = read_layout(admin, topics, timeout_s=15.0)
    except KafkaException as error:
        raise FatalError(f"cannot read the topics' layout from Kafka: {error}") from error
    found = problems(layout, topics, expected_partitions=None)
    if found:
        raise ConfigError("; ".join(found))
    return TopologyWatch(admin, topics, layout.partitions[topics.events], every_s)
