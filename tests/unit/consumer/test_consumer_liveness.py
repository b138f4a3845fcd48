"""``/healthz`` is a liveness deadline, not only a flag: it fails once the loop has not
completed an iteration (or a restore step) for ``liveness_timeout_s``, so a liveness probe
restarts a wedged scorer. No clock is waited on: the last beat is set in the past."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from test_consumer_recovery import Scorer, changelog_of

from consumer.health import HealthServer, HealthState
from consumer.metrics import ScorerMetrics


def status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def test_healthz_fails_when_the_loop_stops_beating() -> None:
    state = HealthState(liveness_timeout_s=30)
    server = HealthServer(ScorerMetrics(), host="127.0.0.1", port=0, state=state)
    try:
        assert status(server.port, "/healthz") == 503  # not started
        state.alive = True
        state.beat()
        assert status(server.port, "/healthz") == 200
        state.last_beat = time.monotonic() - 31  # wedged for longer than the deadline
        assert status(server.port, "/healthz") == 503
        state.beat()
        assert status(server.port, "/healthz") == 200
        state.alive = False  # the loop ended
        assert status(server.port, "/healthz") == 503
    finally:
        server.close()


def test_a_long_restore_keeps_beating(bundle, policy) -> None:
    scorer = Scorer(bundle, policy, changelog={0: changelog_of(bundle, policy, 0)})
    scorer.health.alive = True
    scorer.health.last_beat = time.monotonic() - 10_000
    assert not scorer.health.live
    scorer.assign(0)
    assert scorer.recovery.restore_pending(keep_going=lambda: True)
    assert scorer.health.live  # every restore step beat


def test_a_stall_on_a_broker_outage_keeps_healthz_passing_past_the_deadline() -> None:
    state = HealthState(liveness_timeout_s=30)
    state.alive = True
    state.stall("commit_transaction", "_TIMED_OUT")
    state.last_beat = time.monotonic() - 300  # blocked inside the commit for 5 minutes
    assert state.live  # /readyz fails instead; restarting would not bring Kafka back
    state.resume()
    assert not state.live
