"""``/metrics``, ``/healthz`` and ``/readyz`` on one HTTP port, served from a daemon thread.

- ``/healthz``: 200 while the processing loop is alive (a liveness probe restarts a wedged one).
- ``/readyz``: 200 once the instance has joined its group and every assigned partition's state
  is restored from the changelog; 503 before (a readiness probe keeps traffic/alerts away), and
  503 while the scorer is stalled by a broker outage (ARCHITECTURE.md §5: it waits, within
  ``--outage-patience-s``; ``/healthz`` keeps passing then, since restarting would not help).
- ``/metrics``: the Prometheus exposition of :class:`consumer.metrics.ScorerMetrics`.

Example::

    >>> from consumer.metrics import ScorerMetrics
    >>> server = HealthServer(ScorerMetrics(), host="127.0.0.1", port=0)
    >>> server.port > 0
    True
    >>> server.close()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from consumer.metrics import ScorerMetrics


class HealthState:
    """Flags the loop sets and the probes read (plain attributes: one writer thread).

    ``stalled_since`` (epoch seconds) and ``stalled_on`` (the Kafka call that fails) are set by
    ``consumer.checkpoint`` from the first failed commit of an outage until one succeeds."""

    def __init__(self) -> None:
        self.alive = False
        self.ready = False
        self.stalled_since: float | None = None
        self.stalled_on = ""
        self.stalled_why = ""

    def stall(self, on: str, why: str) -> None:
        self.stalled_on, self.stalled_why = on, why
        self.stalled_since = time.time()

    def resume(self) -> None:
        self.stalled_since = None
        self.stalled_on = ""
        self.stalled_why = ""

    def stalled_seconds(self) -> float:
        """``loanrec_stalled_seconds``: 0 unless stalled (read on every scrape)."""
        since = self.stalled_since
        return 0.0 if since is None else max(0.0, time.time() - since)

    def readiness(self) -> tuple[bool, str]:
        since = self.stalled_since
        if since is not None:
            return False, (
                f"stalled for {time.time() - since:.0f} s on {self.stalled_on}: {self.stalled_why}"
            )
        return self.ready, "ready" if self.ready else "not ready"


class HealthServer:
    def __init__(
        self,
        metrics: ScorerMetrics,
        host: str = "0.0.0.0",
        port: int = 0,
        state: HealthState | None = None,
    ) -> None:
        self.state = state or HealthState()
        self._server = ThreadingHTTPServer((host, port), _handler(metrics, self.state))
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(metrics: ScorerMetrics, state: HealthState) -> type[BaseHTTPRequestHandler]:
    routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, metrics.exposition()),
        "/healthz": lambda: _probe(state.alive, "alive" if state.alive else "not alive"),
        "/readyz": lambda: _probe(*state.readiness()),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            status, content_type, body = route() if route else (404, "text/plain", b"not found\n")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:  # scrapes are not events of interest
            pass

    return Handler


def _probe(ok: bool, what: str) -> tuple[int, str, bytes]:
    return (200 if ok else 503), "text/plain", f"{what}\n".encode()
