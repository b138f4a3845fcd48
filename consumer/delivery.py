"""What a failed delivery means (issue #12, item 6: permanent errors stop loudly).

A delivery error arrives in the producer's delivery report (``on_delivery``, served by poll,
flush or commit_transaction) and, under exactly once, makes the open transaction abortable;
``consumer.checkpoint`` then aborts, rolls back and redoes the unit. That is right for an error
time cures, and an endless loop for one it does not. So each failure gets one remedy
(:func:`remedy`):

- :attr:`Remedy.retry`: transient (a leader moving, not enough replicas, a timeout, a purge
  caused by our own abort). The unit is redone with the checkpoint's capped backoff, within
  ``--outage-patience-s``.
- :attr:`Remedy.dead_letter`: the record is at fault -- larger than its topic's
  ``max.message.bytes`` (MSG_SIZE_TOO_LARGE from the broker, RecordTooLargeException). The
  checkpoint learns the topic's limit (:func:`read_size_limits`) and the redo dead-letters
  every output record over it (reason ``output_too_large``); the stream goes on. The
  changelog is not an output: a state record over its limit cannot be dropped, so it stops.
- :attr:`Remedy.stop`: no retry can fix it -- authorization (TOPIC_AUTHORIZATION_FAILED and
  the cluster / transactional-id ones), the topic or partition gone (librdkafka reports a topic
  missing from the metadata as _UNKNOWN_TOPIC / _UNKNOWN_PARTITION after
  ``topic.metadata.propagation.max.ms``, KIP-516's deletions included), a producer setting the
  broker refuses. The open transaction is aborted and the scorer exits 1 with
  :func:`stop_message`: the topic, the error and the fix.

The functions here are pure (a ``KafkaError`` code and topic names in, a decision out), which
is what the unit tests check; tests/integration/test_stream_delivery_errors.py checks them on a
real broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from confluent_kafka import KafkaError, KafkaException

from consumer.errors import FatalError
from schemas.topics import Topics


class Remedy(StrEnum):
    retry = "retry"
    dead_letter = "dead_letter"
    stop = "stop"


class PermanentDeliveryError(FatalError):
    """A delivery error that no retry can fix; the message names the topic, error and fix."""


@dataclass(frozen=True)
class DeliveryFailure:
    """One delivery report with an error (what ``on_delivery`` saw)."""

    topic: str
    code: int
    name: str
    text: str
    size: int  # the record's estimated size in a batch of its own (:func:`record_size`)


# A record batch of magic v2 has a 61-byte header, and a record adds at most 21 bytes of
# varints and attributes around its key and value, plus each header's. The broker compares the
# whole batch with max.message.bytes (Kafka's LogValidator), so this is an upper bound of what
# one record alone costs: a record under it may be refused when batched with others, never alone.
BATCH_OVERHEAD = 61 + 21
HEADER_OVERHEAD = 10

# MSG_SIZE_TOO_LARGE is both the broker's (RecordTooLargeException) and librdkafka's local one; a
# batch over the broker's segment size is RECORD_LIST_TOO_LARGE.
_TOO_LARGE = (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE)
_AUTHORIZATION = (
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError._AUTHENTICATION,
)
_GONE = (KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION, KafkaError.TOPIC_EXCEPTION)
# What a topic that is gone looks like -- and so does a partition moving, or an outage; the
# cluster's metadata decides. Records for a deleted topic's partitions are retried by librdkafka
# against UNKNOWN_TOPIC_OR_PART until message.timeout.ms, so they may end as _MSG_TIMED_OUT
# (and the commit as _TIMED_OUT) instead: seen on a real broker, depending on whether the
# partition was already in the transaction when the topic went.
UNKNOWN_TOPIC_CODES = (
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    *_GONE,
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TIMED_OUT,
)
_REFUSED_SETTINGS = (
    KafkaError.INVALID_CONFIG,
    KafkaError.INVALID_REQUIRED_ACKS,
    KafkaError.POLICY_VIOLATION,
    KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
    KafkaError.UNSUPPORTED_VERSION,
    KafkaError.INVALID_RECORD,
    KafkaError.UNSUPPORTED_COMPRESSION_TYPE,
    KafkaError._INVALID_ARG,
)


def record_size(key: bytes | None, value: bytes | None, headers: list | None = None) -> int:
    """An upper bound of the record's size in a batch of its own (see :data:`BATCH_OVERHEAD`)."""
    size = BATCH_OVERHEAD + len(key or b"") + len(value or b"")
    for name, header in headers or ():
        size += HEADER_OVERHEAD + len(name) + len(header or b"")
    return size


def remedy(code: int, topic: str, topics: Topics) -> Remedy:
    """What to do about a delivery error ``code`` for a record to ``topic``.

    UNKNOWN_TOPIC_OR_PART from a broker is transient (librdkafka refreshes the metadata and
    retries it itself, e.g. during a reassignment); what reaches a delivery report for a topic
    that is really gone is _UNKNOWN_TOPIC / _UNKNOWN_PARTITION."""
    if code in _TOO_LARGE:
        outputs = (topics.strategy_changes, topics.risk_alerts, topics.dlq)
        return Remedy.dead_letter if topic in outputs else Remedy.stop
    if code in _AUTHORIZATION or code in _GONE or code in _REFUSED_SETTINGS:
        return Remedy.stop
    return Remedy.retry


def permanent_commit_error(code: int) -> bool:
    """Whether a commit failing with ``code`` can never succeed, whatever its delivery reports
    say. Too large is not: that error names no record, its delivery report does."""
    return code in _AUTHORIZATION or code in _GONE or code in _REFUSED_SETTINGS


def stop_message(failure: DeliveryFailure, limit: int | None = None) -> str:
    """One line for the operator: the topic, the error, the fix, and what was committed."""
    what = f"cannot write to {failure.topic}: {failure.name} ({failure.text})"
    code = failure.code
    if code in _AUTHORIZATION:
        fix = (
            f"grant the scorer's principal WRITE and DESCRIBE on topic {failure.topic} (and "
            "WRITE on its transactional id, IDEMPOTENT_WRITE on the cluster), e.g. "
            f"kafka-acls.sh --add --allow-principal User:<scorer> --operation Write "
            f"--operation Describe --topic {failure.topic}; then restart"
        )
    elif code in _GONE or code == KafkaError.UNKNOWN_TOPIC_OR_PART:
        fix = (
            f"the topic {failure.topic} does not exist (deleted?): recreate it with the input "
            "topic's partition count (loan-recovery topics create), then restart"
        )
    elif code in _TOO_LARGE and limit is not None and failure.size <= limit:
        fix = (
            f"no record alone exceeds {failure.topic}'s max.message.bytes={limit}, a batch of "
            f"them does: set batch.size below {limit} in --kafka-config, or raise the topic's "
            "max.message.bytes (kafka-configs.sh --alter --entity-type topics --add-config "
            "max.message.bytes=...)"
        )
    elif code in _TOO_LARGE:
        fix = (
            f"a {failure.size}-byte record exceeds {failure.topic}'s max.message.bytes"
            f"{'' if limit is None else f'={limit}'} and cannot be dead-lettered (state): raise "
            "it (kafka-configs.sh --alter --entity-type topics --add-config "
            "max.message.bytes=...), then restart"
        )
    else:
        fix = "the broker refuses the producer's settings: fix them in --kafka-config, restart"
    return (
        f"{what}; no retry can fix this: {fix}. The open transaction was aborted: no input "
        "offset past the last commit was committed"
    )


def missing_topics(admin_config: dict[str, str], topic_names: list[str]) -> list[str]:
    """Those of ``topic_names`` the cluster's metadata does not have; none if it cannot be
    asked (an outage is not a deletion)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**admin_config, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=2)
    except KafkaException:
        return []
    return [
        name
        for name in topic_names
        if name not in metadata.topics or metadata.topics[name].error is not None
    ]


def read_size_limits(admin_config: dict[str, str], topic_names: list[str]) -> dict[str, int]:
    """``max.message.bytes`` of each topic that answers (one DescribeConfigs request)."""
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    admin = AdminClient({**admin_config, "log_level": 0})
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in topic_names]
    limits: dict[str, int] = {}
    for resource, future in admin.describe_configs(resources, request_timeout=10).items():
        try:
            entry = future.result(timeout=15).get("max.message.bytes")
        except (KafkaException, TimeoutError):  # a topic that does not answer: no known limit
            continue
        if entry is not None and entry.value is not None:
            limits[resource.name] = int(entry.value)
    return limits
