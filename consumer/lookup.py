"""``GET /loans/{loan_id}``: one loan's state summary and decisions as JSON (ARCHITECTURE.md §9),
and the same document offline (`loan-recovery explain`).

What the answer shows (docs/INTERNALS.md, "Loan lookup"):

- **Committed, not in-flight.** A loan touched by the open transaction is answered from its
  undo-log image (the state the last committed transaction left, i.e. what the changelog and
  the output topics' ``read_committed`` readers hold); a loan opened in the open transaction is
  not known yet (404). The loop holds :attr:`consumer.health.HealthState.lock` while it
  processes a poll (``consumer.app``), and the lookup reads under the same lock, so it never
  sees a batch half applied; commits and aborts only swap whole objects.
- **Decisions.** ``score``, ``tier``, ``segment``, ``strategy`` are the loan's last decision
  (kept in its ``LoanState``). ``decisions`` are its ``StrategyChanged`` records among the
  partition's last :data:`consumer.partition_store.DECISION_HISTORY` committed ones that this
  instance made since it took the partition (``history.complete`` is false: a long-lived or
  recently moved loan's older changes are not there); offline the history is complete.
- **Ownership.** The loan's partition is ``partition_for(loan_id, input partitions)``; if this
  instance does not own it, the answer is 421 naming the owning group member and its HTTP
  address (read from its ``client.id``, see :func:`advertised_client_id`), or saying it
  could not be found.
"""

from __future__ import annotations

import hmac
import math
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from consumer.outputs import EarlyWarningAlert, StrategyChanged
from consumer.partitioning import partition_for
from consumer.processor import PartitionProcessor
from consumer.serializers import as_record
from models.features.state import LoanState

PREFIX = "/loans/"
MAX_LOAN_ID = 128  # bytes; longer ids are not loan ids (and not worth a lookup)
HTTP_MARK = "@http://"  # client.id = "<id>@http://HOST:PORT": the member's lookup address
Answer = tuple[int, dict[str, Any], dict[str, str]]  # status, JSON body, extra headers


def advertised_client_id(base: str, http_address: str) -> str:
    """The consumer's ``client.id``: ``base`` plus this instance's HTTP address, so another
    instance can name it in a 421 (``describe_consumer_groups`` reports members' client ids).

    >>> advertised_client_id("scorer-1", "10.0.0.7:9108")
    'scorer-1@http://10.0.0.7:9108'
    >>> http_address_of("scorer-1@http://10.0.0.7:9108")
    'http://10.0.0.7:9108'
    """
    return f"{base}{HTTP_MARK}{http_address}"


def http_address_of(client_id: str) -> str | None:
    _, mark, address = client_id.rpartition(HTTP_MARK)
    return f"http://{address}" if mark and address else None


def advertised_address(host: str, port: int) -> str:
    """Where others reach this instance: the bound host, or the host name if bound to all."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bearer_ok(authorization: str | None, token: str | None) -> bool:
    """True without a configured token; else the header must be ``Bearer <token>``, compared
    in constant time (no timing oracle on the token's prefix).

    >>> bearer_ok(None, None), bearer_ok("Bearer s3cret", "s3cret"), bearer_ok(None, "s3cret")
    (True, True, False)
    """
    if not token:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def _number(value: float | None) -> float | None:
    """JSON has no NaN/inf: a missing or unbounded value is null."""
    return value if value is not None and math.isfinite(value) else None


def decision_record(change: StrategyChanged) -> dict[str, Any]:
    """The change as its Avro record (what a consumer of the strategy topic sees), JSON-safe."""
    record = as_record(change)
    record["risk_score"] = _number(change.risk_score)
    return record


def loan_document(
    state: LoanState,
    partition: int,
    decisions: Sequence[StrategyChanged],
    *,
    view: str,
    complete: bool,
    alerts: Sequence[EarlyWarningAlert] = (),
) -> dict[str, Any]:
    """The JSON document of one loan (the same for ``/loans`` and `explain`).

    ``reasons`` are the last decision's catalogued reasons (code, feature, text,
    contribution; ARCHITECTURE.md §7); every decision record carries its own, and its
    ``policy_rule``."""
    features = {name: _number(value) for name, value in state.feature_dict().items()}
    records = [decision_record(c) for c in decisions]
    document: dict[str, Any] = {
        "loan_id": state.loan_id,
        "borrower_id": state.borrower_id,
        "partition": partition,
        "view": view,
        "state": {
            "closed": state.closed,
            "written_off": state.written_off,
            "recovered_after_write_off": state.recovered_after_write_off,
            "last_event_at": state.last_event_at,
            "labels": state.labels(),
            "features": features,
        },
        "score": _number(state.risk_score),
        "tier": state.risk_tier,
        "segment": state.segment,
        "strategy": state.strategy,
        "reasons": records[-1]["reasons"] if records else [],
        "decisions": records,
        "history": {"complete": complete, "decisions": len(decisions)},
    }
    if alerts:
        document["alerts"] = [as_record(a) | {"risk_score": _number(a.risk_score)} for a in alerts]
    return document


def error_body(status: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"status": status, "error": message, **extra}


class Partitions(Protocol):
    """What the lookup reads of ``consumer.recovery.Recovery``."""

    processors: Mapping[int, PartitionProcessor]
    pending: set[int]


@dataclass(frozen=True)
class Owner:
    """The group member that owns a partition (from ``describe_consumer_groups``)."""

    client_id: str
    host: str
    instance_id: str | None
    http: str | None


OwnerFinder = Callable[[int], Owner | None]


class LoanLookup:
    """Answers ``GET /loans/{loan_id}`` from the partitions the loop owns; see the module
    docstring. ``partitions`` is the input topic's partition count; ``find_owner(p)`` names
    the member owning partition ``p`` (it may raise: the 421 then says why it is unknown)."""

    def __init__(
        self,
        partitions: int,
        lock: threading.Lock,
        source: Callable[[], Partitions | None],
        find_owner: OwnerFinder,
    ) -> None:
        self.partitions = partitions
        self.lock = lock
        self._source = source
        self._find_owner = find_owner

    def answer(self, loan_id: str) -> Answer:
        if not loan_id or len(loan_id.encode()) > MAX_LOAN_ID or not loan_id.isprintable():
            return 400, error_body(400, f"not a loan id: {loan_id[:MAX_LOAN_ID]!r}"), {}
        partition = partition_for(loan_id, self.partitions)
        owned = self._source()
        if owned is None:
            return 503, error_body(503, "not started", partition=partition), {}
        # pending before and after the read: a partition restored meanwhile is not trusted.
        processor = owned.processors.get(partition)
        if processor is None:
            return self._misdirected(loan_id, partition)
        if partition in owned.pending:
            return 503, error_body(503, "partition restoring", partition=partition), {}
        with self.lock:
            document = self._read(processor, loan_id, partition)
        if partition in owned.pending or owned.processors.get(partition) is not processor:
            return 503, error_body(503, "partition moving", partition=partition), {}
        if document is None:
            return 404, error_body(404, f"unknown loan {loan_id}", partition=partition), {}
        return 200, document, {}

    @staticmethod
    def _read(processor: PartitionProcessor, loan_id: str, partition: int) -> dict | None:
        store = processor.store
        # The open transaction's changes (and the one committing) are not committed yet.
        state = store.committed_image(loan_id)
        if state is None:
            return None
        decisions = [c for c in store.decisions.copy() if c.loan_id == loan_id]
        return loan_document(state, partition, decisions, view="committed", complete=False)

    def _misdirected(self, loan_id: str, partition: int) -> Answer:
        try:
            owner = self._find_owner(partition)
        except Exception as error:  # the broker is unreachable, the group is rebalancing...
            owner, why = None, f"{type(error).__name__}: {error}"
        else:
            why = "no member of the group owns it (rebalancing?)"
        body = error_body(
            421, f"loan {loan_id} is on partition {partition}, not owned here", partition=partition
        )
        if owner is None:
            body["owner"] = None
            body["owner_unknown"] = why
            return 421, body, {}
        body["owner"] = asdict(owner)
        headers = {"Location": f"{owner.http}{PREFIX}{loan_id}"} if owner.http else {}
        return 421, body, headers


def group_owner_finder(
    admin_config: dict[str, str], group: str, topic: str, timeout_s: float = 5.0
) -> OwnerFinder:
    """``find_owner`` from the consumer group's current assignment (one AdminClient, made on
    the first misdirected lookup)."""
    admin: list[Any] = []

    def find(partition: int) -> Owner | None:
        from confluent_kafka.admin import AdminClient

        if not admin:
            admin.append(AdminClient({**admin_config, "log_level": 0}))
        futures = admin[0].describe_consumer_groups([group], request_timeout=timeout_s)
        description = futures[group].result(timeout=timeout_s)
        return owner_of(description.members, topic, partition)

    return find


def owner_of(members: Iterable[Any], topic: str, partition: int) -> Owner | None:
    """The member (``confluent_kafka.admin.MemberDescription``) assigned ``topic:partition``."""
    for member in members:
        assignment = member.assignment
        for tp in assignment.topic_partitions if assignment else ():
            if tp.topic == topic and tp.partition == partition:
                return Owner(
                    client_id=member.client_id,
                    host=member.host,
                    instance_id=member.group_instance_id,
                    http=http_address_of(member.client_id),
                )
    return None
