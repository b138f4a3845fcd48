"""librdkafka settings for the event producer: a user's properties file plus our guarantees.

A properties file (``--kafka-config FILE``) is passed through unchanged, so SASL/SSL work the
way users know them from any librdkafka or Java client::

    # client.properties
    bootstrap.servers=broker-1.example.com:9093
    security.protocol=SASL_SSL
    sasl.mechanisms=SCRAM-SHA-512
    sasl.username=loanrec
    sasl.password=...
    ssl.ca.location=/etc/ssl/certs/bank-ca.pem

The only settings we refuse are the ones that would break per-loan ordering or lose
acknowledgements (idempotence off, ``acks`` below ``all``, another partitioner than the Java
client's Murmur2, which the batch reference reproduces).

Example::

    >>> cfg = producer_config("127.0.0.1:9092", {"linger.ms": "50"})
    >>> cfg["enable.idempotence"], cfg["acks"], cfg["linger.ms"]
    ('true', 'all', '50')
"""

from __future__ import annotations

from schemas.client_config import PARTITIONER

# One loader for both packages (they may not import each other); re-exported for the CLI.
from schemas.client_config import KafkaConfigError as KafkaConfigError
from schemas.client_config import load_properties as load_properties

# Defaults chosen for replay throughput; a properties file may override any of them.
THROUGHPUT_DEFAULTS: dict[str, str] = {
    "linger.ms": "10",
    "batch.size": "1000000",
    "queue.buffering.max.messages": "500000",
    "queue.buffering.max.kbytes": "262144",
    "compression.type": "lz4",
}

# What the stream's correctness rests on; a file that contradicts these is rejected.
REQUIRED: dict[str, str] = {
    "enable.idempotence": "true",
    "acks": "all",
    "partitioner": PARTITIONER,  # as Java producers do; `score` reproduces it
}
_ACKS_ALL = {"all", "-1"}
# The scorer's batch reference (`loan-recovery score`) reproduces the partitioner set here.
_FORBIDDEN = ("partitioner", "partitioner_cb", "transactional.id")


def check_user_config(user: dict[str, str], source: str = "--kafka-config") -> None:
    """Raise :class:`KafkaConfigError` if ``user`` weakens the producer's guarantees."""
    for key in _FORBIDDEN:
        if key in user and not (key == "partitioner" and user[key] == PARTITIONER):
            raise KafkaConfigError(
                f"{source}: remove '{key}': the producer must use {PARTITIONER} (the Java "
                "default) and "
                "no transactions, so that `loan-recovery score` reproduces the stream exactly"
            )
    if str(user.get("enable.idempotence", "true")).lower() != "true":
        raise KafkaConfigError(f"{source}: enable.idempotence must stay true (per-loan order)")
    if str(user.get("acks", "all")).lower() not in _ACKS_ALL:
        raise KafkaConfigError(f"{source}: acks must stay 'all' (no silently lost events)")


def producer_config(
    bootstrap_servers: str | None,
    user: dict[str, str] | None = None,
    source: str = "--kafka-config",
) -> dict[str, str]:
    """Our defaults, then the user's settings, then the guarantees (validated, not overridden
    silently). ``bootstrap_servers`` given explicitly wins over the file's."""
    user = dict(user or {})
    check_user_config(user, source)
    config = {**THROUGHPUT_DEFAULTS, **user, **REQUIRED}
    if bootstrap_servers:
        config["bootstrap.servers"] = bootstrap_servers
    if not config.get("bootstrap.servers"):
        raise KafkaConfigError(f"{source}: no bootstrap.servers given")
    return config
