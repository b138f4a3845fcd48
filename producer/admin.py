"""Create the project's topics (DESIGN.md §3), idempotently."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.topics import DEFAULT_PARTITIONS, Topics


@dataclass(frozen=True)
class TopicResult:
    name: str
    partitions: int
    cleanup_policy: str
    created: bool  # False: it existed already
    replication_factor: int = -1  # as requested; -1: the cluster's default.replication.factor


def topic_specs(topics: Topics, partitions: int, replication_factor: int = -1) -> list[NewTopic]:
    # The changelog is partitioned like the input so that a loan's state lives in the
    # changelog partition with the same number as its input partition.
    delete = {"cleanup.policy": "delete"}
    compact = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": "600000"}
    names = (topics.events, topics.strategy_changes, topics.risk_alerts, topics.dlq)
    return [
        *(NewTopic(name, partitions, replication_factor, config=delete) for name in names),
        NewTopic(topics.changelog, partitions, replication_factor, config=compact),
    ]


def create_topics(
    bootstrap_servers: str,
    topics: Topics | None = None,
    partitions: int = DEFAULT_PARTITIONS,
    extra_config: dict[str, str] | None = None,
    timeout_s: float = 30.0,
    replication_factor: int = -1,
) -> list[TopicResult]:
    """Create every topic that does not exist yet; existing topics are left as they are.
    ``replication_factor`` -1 leaves it to the cluster's ``default.replication.factor``."""
    topics = topics or Topics()
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, **(extra_config or {})})
    specs = topic_specs(topics, partitions, replication_factor)
    futures = admin.create_topics(specs, operation_timeout=timeout_s, request_timeout=timeout_s)
    results = []
    for spec in specs:
        try:
            futures[spec.topic].result()
            created = True
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            created = False
        results.append(
            TopicResult(
                spec.topic,
                spec.num_partitions,
                spec.config["cleanup.policy"],
                created,
                replication_factor,
            )
        )
    return results
