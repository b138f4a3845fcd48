"""Scorer settings: CLI flags, ``LOANREC_*`` environment variables (handled by the CLI), and a
librdkafka properties file passed through unchanged, so SASL/SSL work as users know them (read
by ``schemas.client_config.load_properties``, the one loader ``producer`` uses too).

Precedence: a flag, then its ``LOANREC_*`` variable, then the properties file (for
``bootstrap.servers``), then defaults. The settings the guarantees rest on (manual offset
commits, ``read_committed``, the transactional id) are set by us and win over the file.

Example::

    >>> cfg = ServeConfig(bootstrap_servers="127.0.0.1:9092", model_dir=Path("m"),
    ...                   kafka_properties={"security.protocol": "SASL_SSL"})
    >>> c = cfg.consumer_config()
    >>> c["isolation.level"], c["enable.auto.commit"], c["security.protocol"]
    ('read_committed', 'false', 'SASL_SSL')
    >>> cfg.producer_config()["transactional.id"], c["group.instance.id"]
    ('loan-recovery-scorer-0', 'scorer-0')
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from consumer.errors import ConfigError as ConfigError
from consumer.lookup import advertised_client_id
from consumer.partition_store import DEFAULT_CLOSED_RETENTION_DAYS
from schemas.topics import Topics


class Guarantee(StrEnum):
    exactly_once = "exactly-once"
    at_least_once = "at-least-once"


# The longest a partition's changelog restore may take (consumer.recovery). The loop does not
# poll the group consumer meanwhile, so max.poll.interval.ms must exceed it, or the member
# would be expelled from the group in the middle of a long restore (librdkafka's default is
# 300 s). A wedged loop is caught by the liveness deadline of /healthz instead.
RESTORE_TIMEOUT_S = 600.0
MAX_POLL_INTERVAL_MS = int(RESTORE_TIMEOUT_S * 1000) + 60_000
# How long a restore waits for the changelog to reflect the group's committed input offset
# (consumer.recovery.ChangelogRestorer), within RESTORE_TIMEOUT_S.
RESTORE_WAIT_S = 60.0
# A static member's session must outlast the broker outages the scorer rides out: with the group
# coordinator away, librdkafka ends the session itself after session.timeout.ms without a
# heartbeat answer and rejoins with the same group.instance.id, and the coordinator, once back,
# fences the member's own older id -- a fatal "Static consumer fenced by other consumer with
# same group.instance.id" for a scorer that has no twin (confluentinc/librdkafka#3437). So the
# session lasts the outage patience plus a minute (the broker's group.max.session.timeout.ms,
# 30 min by default, caps it); --kafka-config may set session.timeout.ms otherwise.
SESSION_MARGIN_S = 60.0
MAX_SESSION_TIMEOUT_MS = 1_800_000


def default_instance_id() -> str:
    """The host name: stable across restarts of one replica (container, pod), distinct between
    replicas. A restarted instance reuses its transactional id, which aborts a transaction it
    left open when it crashed instead of waiting for the broker's transaction timeout, and its
    ``group.instance.id`` (static membership, ARCHITECTURE.md §8), which takes its
    predecessor's place in the group at once instead of waiting for that member's session to
    time out. In a Kubernetes StatefulSet the host name is the pod name (``scorer-0``,
    ``scorer-1``, ...), stable by design; in compose, set ``hostname:`` or
    ``LOANREC_INSTANCE_ID`` per service (a Deployment's random pod names are not stable)."""
    return socket.gethostname() or "scorer-0"


# Settings the exactly-once design depends on; a properties file may not change them.
_CONSUMER_OWNED = ("enable.auto.commit", "isolation.level", "group.id")
_PRODUCER_OWNED = ("transactional.id", "enable.idempotence")


@dataclass
class ServeConfig:
    bootstrap_servers: str
    model_dir: Path
    policy_path: Path | None = None
    topics: Topics = field(default_factory=Topics)
    group_id: str | None = None  # default: the app id
    instance_id: str = "scorer-0"
    metrics_port: int | None = 9108  # 0 = any free port, None = no HTTP server
    metrics_host: str = "127.0.0.1"  # --http-host: the loan lookup carries personal data
    # HOST:PORT of this instance's HTTP server, advertised to the group in the consumer's
    # client.id (consumer.lookup.advertised_client_id) so a misdirected lookup can name it.
    http_address: str | None = None
    # 50, not 100, since commits run in the background (``background_commit``): the loop no
    # longer idles for each commit's round trips, so more commits cost little throughput
    # (docs/SERVING.md has the A/B) and each decision waits half as long for its unit's.
    commit_interval_ms: int = 50
    # A unit may commit this early once the scorer has taken everything already fetched
    # (``consumer.checkpoint.Checkpoint.due``). Off by default (= the commit interval): at
    # 6k events/s it halved the p50 (155 -> 84 ms), but at 12k on 2 cores the extra
    # transactions cost the scorer CPU and the p99 doubled (296 -> 578 ms, docs/BENCHMARKS.md).
    caught_up_commit_ms: int = 50
    # Exactly once: a unit's commit calls run on their thread while the loop processes the
    # next unit, whose outputs wait until the commit returns (consumer.checkpoint, "commit
    # in the background"). Off: the loop waits for every commit, as before.
    background_commit: bool = True
    guarantee: Guarantee = Guarantee.exactly_once
    kafka_properties: dict[str, str] = field(default_factory=dict)
    exit_when_idle_s: float | None = None
    max_batch: int = 2000
    # When input trickles in, a poll gathers up to this many events (capped by max_batch),
    # waiting at most batch_wait_ms and never past the open transaction's due time, so no
    # decision waits longer for its commit: the scoring calls have a fixed cost per batch, and
    # the processor took 62-70 us/event in batches of 25 against 23-29 in batches of 400.
    min_batch: int = 500
    batch_wait_ms: int = 25
    transaction_timeout_ms: int = 30000
    commit_timeout_s: float = 10.0
    # How long a broker outage may stall the scorer before it gives up and exits (ARCHITECTURE.md
    # §5): the default is Kafka Streams' task.timeout.ms, 5 minutes.
    outage_patience_s: float = 300.0
    # group.instance.id = instance_id. The trade-off: a static member that dies or stops
    # (a static member does not leave the group on close) keeps its partitions until
    # session.timeout.ms passes, unless it comes back first -- which is the common case.
    static_membership: bool = True
    # How often the running scorer re-checks partition counts and the changelog's compaction
    # (consumer.topology); the start-up check always runs.
    topology_check_s: float = 300.0
    # A closed loan leaves state this long (event time) after its last event (ARCHITECTURE.md
    # §8); `score --closed-retention-days` must be given the same value for parity.
    closed_retention_days: float = DEFAULT_CLOSED_RETENTION_DAYS
    # How long a restore waits for the changelog to catch up with the committed input offset
    # before it stops the scorer (ARCHITECTURE.md §8).
    restore_wait_s: float = RESTORE_WAIT_S

    def __post_init__(self) -> None:
        for key in (*_CONSUMER_OWNED, *_PRODUCER_OWNED):
            if key in self.kafka_properties:
                raise ConfigError(
                    f"--kafka-config: remove '{key}': the scorer sets it (use "
                    "--group-id / --instance-id / --guarantee)"
                )
        strategy = self.kafka_properties.get("partition.assignment.strategy", "")
        if "cooperative" in strategy or self.kafka_properties.get("group.protocol") == "consumer":
            # Restore-on-assign and commit-on-revoke assume eager (whole) reassignments.
            raise ConfigError(
                "--kafka-config: incremental rebalancing (cooperative-sticky or "
                "group.protocol=consumer) is not supported; remove it"
            )
        if self.commit_interval_ms < 1:
            raise ConfigError("--commit-interval-ms must be >= 1")
        if self.caught_up_commit_ms < 1:
            raise ConfigError("--caught-up-commit-ms must be >= 1")
        if self.min_batch < 1:
            raise ConfigError("--min-batch must be >= 1")
        if self.batch_wait_ms < 0:
            raise ConfigError("--batch-wait-ms must be >= 0")
        if not self.closed_retention_days >= 0:  # (catches NaN)
            raise ConfigError("--closed-retention-days must be >= 0")
        if self.outage_patience_s < 0:
            raise ConfigError("--outage-patience-s must be >= 0")
        if not 0 <= self.restore_wait_s <= RESTORE_TIMEOUT_S:  # (catches NaN)
            raise ConfigError(f"--restore-wait-s must be between 0 and {RESTORE_TIMEOUT_S:g}")

    @property
    def group(self) -> str:
        return self.group_id or self.topics.app_id

    @property
    def session_ms(self) -> int:
        """session.timeout.ms of a static member (see :data:`SESSION_MARGIN_S`)."""
        wanted = int((self.outage_patience_s + SESSION_MARGIN_S) * 1000)
        return min(max(wanted, 45_000), MAX_SESSION_TIMEOUT_MS)

    @property
    def transactional_id(self) -> str:
        return f"{self.topics.app_id}-{self.instance_id}"

    def _common(self) -> dict[str, str]:
        return {**self.kafka_properties, "bootstrap.servers": self.bootstrap_servers}

    def admin_config(self) -> dict[str, str]:
        """For AdminClients (topic checks, the loan lookup's group description)."""
        return self._common()

    def consumer_config(self) -> dict[str, str]:
        advertised = {}
        if self.http_address:
            base = self.kafka_properties.get("client.id") or self.instance_id
            advertised["client.id"] = advertised_client_id(base, self.http_address)
        static = (
            {"group.instance.id": self.instance_id, "session.timeout.ms": str(self.session_ms)}
            if self.static_membership
            else {}
        )
        return {
            "auto.offset.reset": "earliest",
            # The broker answers a fetch once 64 KiB are there or 20 ms passed, not at the
            # first record: under a steady load every fetch, poll and scoring call carried a
            # few dozen events, and each has a fixed cost. Scorer CPU per event at 6,000
            # events/s, three runs each: 53-64 us against 70-75; latency at 8,000 events/s on a
            # warm broker, p50 110-122 ms against 120-122, p99 209-233 against 244.
            "fetch.wait.max.ms": "20",
            "fetch.min.bytes": "65536",
            "queued.max.messages.kbytes": "65536",
            "max.poll.interval.ms": str(MAX_POLL_INTERVAL_MS),
            **static,
            **self._common(),
            **advertised,
            "group.id": self.group,
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            # Read only committed input, and wait for offsets of pending transactions.
            "isolation.level": "read_committed",
        }

    def producer_config(self) -> dict[str, str]:
        config = {
            "linger.ms": "5",
            # Uncompressed by default: compressing costs the scorer's client threads and the
            # broker CPU, and on a CPU-bound host (the benchmark machine: at 40k events/s the
            # commit's flush took 30-100 ms with lz4, 6-28 ms without) that costs more than
            # the bytes saved. Set compression.type in --kafka-config where the network or
            # the brokers' disks are the limit.
            "compression.type": "none",
            # A deleted output topic must fail delivery (consumer.delivery stops the scorer
            # naming it), not come back auto-created with the broker's default partition
            # count: librdkafka's producer asks for auto-creation unless told not to.
            "allow.auto.create.topics": "false",
            **self._common(),
            "enable.idempotence": "true",
        }
        if self.guarantee is Guarantee.exactly_once:
            config["transactional.id"] = self.transactional_id
            config.setdefault("transaction.timeout.ms", str(self.transaction_timeout_ms))
        return config

    def restore_consumer_config(self) -> dict[str, str]:
        """An unsubscribed reader of the changelog: committed records only, end reported."""
        return {
            **self._common(),
            "group.id": f"{self.group}-restore",
            "enable.auto.commit": "false",
            "isolation.level": "read_committed",
            "enable.partition.eof": "true",
            "fetch.wait.max.ms": "10",  # the end is reported after an empty fetch: make it quick
            "auto.offset.reset": "earliest",
        }
