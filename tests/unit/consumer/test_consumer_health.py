"""The probes while a broker outage stalls the scorer (ARCHITECTURE.md §5): not ready, still
alive, and ``loanrec_stalled_seconds`` on /metrics; all back to normal when it resumes."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from consumer.health import HealthServer, HealthState
from consumer.metrics import ScorerMetrics


def test_a_stalled_scorer_is_alive_but_not_ready_and_says_on_what() -> None:
    metrics, state = ScorerMetrics(), HealthState()
    metrics.stalled.set_function(state.stalled_seconds)
    server = HealthServer(metrics, host="127.0.0.1", port=0, state=state)
    base = f"http://127.0.0.1:{server.port}"

    def get(path: str) -> tuple[int, str]:
        response = requests.get(base + path, timeout=5)
        return response.status_code, response.text

    def stalled_seconds() -> float:
        (family,) = [
            f
            for f in text_string_to_metric_families(get("/metrics")[1])
            if f.name == "loanrec_stalled_seconds"
        ]
        return family.samples[0].value

    try:
        state.alive = state.ready = True
        assert get("/readyz") == (200, "ready\n") and stalled_seconds() == 0.0
        state.stall("commit_transaction", "_TIMED_OUT: Timed out")
        state.stalled_since -= 75  # as if the outage began 75 s ago
        status, body = get("/readyz")
        assert status == 503
        assert body.startswith("stalled for 75 s on commit_transaction: _TIMED_OUT")
        assert get("/healthz") == (200, "alive\n")  # restarting would not bring Kafka back
        assert 75 <= stalled_seconds() < 90
        state.resume()
        assert get("/readyz") == (200, "ready\n") and stalled_seconds() == 0.0
        state.alive = state.ready = False
        assert get("/healthz") == (503, "not alive\n") and get("/readyz")[0] == 503
    finally:
        server.close()
