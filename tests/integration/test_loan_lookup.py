"""``GET /loans/{loan_id}`` on live `loan-recovery serve` processes and a real broker
(ARCHITECTURE.md §9, docs/INTERNALS.md "Loan lookup"): 200 with the document `explain`
computes offline, 404 for an unknown loan, 401 without the bearer token (``/metrics`` stays
open), and 421 naming the owning instance when two instances of one group share the input."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from test_stream_eos import Scorer, encoded, produce

from consumer.partitioning import partition_for
from consumer.reference import explain_loan
from producer.admin import create_topics
from schemas.topics import Topics

pytestmark = pytest.mark.integration

PARTITIONS = 4  # two instances own two each
TOKEN = "lookup-test-token"
# Comparable between the stream and `explain`: decided_at is the wall clock of the decision.
WALL_CLOCK = ("decided_at",)


@pytest.fixture
def topics(bootstrap_servers: str, unique_name) -> Topics:
    app = unique_name("lookup")
    t = Topics(
        events=f"{app}.events",
        strategy_changes=f"{app}.changes",
        risk_alerts=f"{app}.alerts",
        dlq=f"{app}.dlq",
        app_id=app,
    )
    create_topics(bootstrap_servers, t, partitions=PARTITIONS)
    return t


@pytest.fixture(scope="module")
def events() -> list[dict]:
    from models.data.synthetic import generate_book

    return generate_book(40, seed=23)[1]


def start(
    bootstrap: str, model: Path, topics: Topics, instance: str, tmp_path: Path, started: list
) -> Scorer:
    properties = tmp_path / f"{instance}.properties"
    properties.write_text("session.timeout.ms=6000\nheartbeat.interval.ms=1000\n")
    scorer = Scorer(
        bootstrap,
        model,
        topics,
        instance,
        properties,
        tmp_path / f"{instance}.log",
        {"--exit-when-idle": "600"},
    )
    started.append(scorer)
    return scorer


def lookup(scorer: Scorer, loan_id: str, token: str | None = None) -> requests.Response | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return requests.get(
            f"http://127.0.0.1:{scorer.port}/loans/{loan_id}", headers=headers, timeout=5
        )
    except requests.RequestException:
        return None


def comparable(document: dict) -> dict:
    """The document without what legitimately differs online vs offline."""
    out = {k: v for k, v in document.items() if k not in ("view", "history", "alerts")}
    out["decisions"] = [
        {k: v for k, v in d.items() if k not in WALL_CLOCK} for d in document["decisions"]
    ]
    return out


def test_lookup_200_is_explain_404_unknown_401_without_token(
    bootstrap_servers: str,
    trained_model: Path,
    bundle,
    policy,
    topics: Topics,
    events: list,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOANREC_HTTP_TOKEN", TOKEN)
    started: list[Scorer] = []
    try:
        scorer = start(bootstrap_servers, trained_model, topics, "solo", tmp_path, started)
        monkeypatch.delenv("LOANREC_HTTP_TOKEN")
        produce(bootstrap_servers, topics.events, encoded(events))
        loan_ids = sorted({e["loan_id"] for e in events})
        expected = {
            loan_id: explain_loan(events, bundle, policy, loan_id, PARTITIONS, topics.events)
            for loan_id in loan_ids[:5]
        }
        # Committed state reaches the lookup after the scorer's next commit (100 ms).
        for loan_id, document in expected.items():
            scorer.wait_for(
                lambda loan_id=loan_id, document=document: (
                    (r := lookup(scorer, loan_id, TOKEN)) is not None
                    and r.status_code == 200
                    and comparable(r.json()) == comparable(document)
                ),
                120,
                f"GET /loans/{loan_id} equal to `explain`",
            )
        answer = lookup(scorer, loan_ids[0], TOKEN)
        assert answer is not None
        body = answer.json()
        assert body["view"] == "committed" and body["score"] is not None
        assert body["partition"] == partition_for(loan_ids[0], PARTITIONS)
        assert body["history"]["decisions"] == len(expected[loan_ids[0]]["decisions"])

        def answered(status: str) -> float:
            return scorer.total("loanrec_lookup_requests_total", status=status)

        before = {status: answered(status) for status in ("404", "401")}
        unknown = lookup(scorer, "L-not-a-loan", TOKEN)
        assert unknown is not None and unknown.status_code == 404
        assert unknown.json()["error"] == "unknown loan L-not-a-loan"

        for token in (None, "wrong-token"):
            denied = lookup(scorer, loan_ids[0], token)
            assert denied is not None and denied.status_code == 401, token
            assert denied.headers["WWW-Authenticate"].startswith("Bearer")
            assert loan_ids[0] not in denied.text  # no personal data without the token
        metrics = requests.get(f"http://127.0.0.1:{scorer.port}/metrics", timeout=5)
        assert metrics.status_code == 200 and "loanrec_events_total" in metrics.text
        # Every answer is counted by its status (while waiting for the commit, more 200s and
        # 404s than these; so the last three requests are checked by what they added).
        assert answered("200") >= len(expected) + 1
        assert (answered("404"), answered("401")) == (before["404"] + 1, before["401"] + 2)
        assert requests.get(f"http://127.0.0.1:{scorer.port}/readyz", timeout=5).status_code == 200
    finally:
        for scorer in started:
            scorer.stop()


def test_lookup_421_names_the_instance_that_owns_the_partition(
    bootstrap_servers: str,
    trained_model: Path,
    topics: Topics,
    events: list,
    tmp_path: Path,
) -> None:
    started: list[Scorer] = []
    try:
        a = start(bootstrap_servers, trained_model, topics, "alpha", tmp_path, started)
        b = start(bootstrap_servers, trained_model, topics, "beta", tmp_path, started)
        produce(bootstrap_servers, topics.events, encoded(events))
        by_partition: dict[int, str] = {}
        for e in events:
            by_partition.setdefault(partition_for(e["loan_id"], PARTITIONS), e["loan_id"])
        assert len(by_partition) == PARTITIONS

        def settled() -> dict[int, tuple[Scorer, Scorer]] | None:
            """partition -> (owner, other) once every loan answers 200 at one instance and a
            421 naming that instance's HTTP port at the other, and each instance owns some."""
            placement = {}
            for partition, loan_id in by_partition.items():
                ra, rb = lookup(a, loan_id), lookup(b, loan_id)
                if ra is None or rb is None:
                    return None
                codes = (ra.status_code, rb.status_code)
                if codes == (200, 421):
                    owner, other, misdirected = a, b, rb
                elif codes == (421, 200):
                    owner, other, misdirected = b, a, ra
                else:
                    return None
                named = misdirected.json().get("owner") or {}
                if named.get("http") is None or not named["http"].endswith(f":{owner.port}"):
                    return None
                placement[partition] = (owner, other)
            # Right after `beta` starts, `alpha` may still own every partition and answer
            # consistently; the split is settled only once the group has given both a share.
            if {owner for owner, _ in placement.values()} != {a, b}:
                return None
            return placement

        seen: list[dict[int, tuple[Scorer, Scorer]]] = []
        a.wait_for(lambda: bool(seen.append(settled() or {}) or seen[-1]), 120, "a stable split")
        result = seen[-1]
        owners = {owner for owner, _ in result.values()}
        assert owners == {a, b}, "each instance owns some of the partitions"
        for partition, (owner, other) in result.items():
            loan_id = by_partition[partition]
            answer = lookup(other, loan_id)
            assert answer is not None and answer.status_code == 421
            body = answer.json()
            assert body["partition"] == partition
            assert body["owner"]["client_id"].startswith("alpha@" if owner is a else "beta@")
            assert body["owner"]["http"] == f"http://127.0.0.1:{owner.port}"
            expected_http = f"{body['owner']['http']}/loans/{loan_id}"
            assert answer.headers["Location"] == expected_http
            followed = requests.get(expected_http, timeout=5)
            assert followed.status_code == 200 and followed.json()["loan_id"] == loan_id
    finally:
        for scorer in started:
            scorer.stop()
