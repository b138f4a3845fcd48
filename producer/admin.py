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


def topic_specs(topics: Topics, partitions: int) -> list[NewTopic]:
    # The changelog is partitioned like the input so that a loan's state lives in the
    # changelog partition with the same number as its input partition.
    delete = {"cleanup.policy": "delete"}
    compact = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0",
               "segment.ms": "600000"}  # fmt: skip
    return [
        NewTopic(topics.events, partitions, 1, config=delete),
        NewTopic(topics.strategy_changes, partitions, 1, config=delete),
        NewTopic(topics.risk_alerts, partitions, 1, config=delete),
        NewTopic(topics.dlq, partitions, 1, config=delete),
        NewTopic(topics.changelog, partitions, 1, config=compact),
    ]


def create_topics(
    bootstrap_servers: str,
    topics: Topics | None = None,
    partitions: int = DEFAULT_PARTITIONS,
    extra_config: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> list[TopicResult]:
    """Create every topic that does not exist yet; existing topics are left as they are."""
    topics = topics or Topics()
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, **(extra_config or {})})
    specs = topic_specs(topics, partitions)
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
            TopicResult(spec.topic, spec.num_partitions, spec.config["cleanup.policy"], created)
        )
    return results
