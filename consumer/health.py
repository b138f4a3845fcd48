"""``/metrics``, ``/healthz`` and ``/readyz`` on one HTTP port, served from a daemon thread.

- ``/healthz``: 200 while the processing loop is alive *and* has completed an iteration (or
  made restore progress) within ``liveness_timeout_s`` (default 120 s): a liveness probe then
  restarts a loop that is wedged -- stuck in a call that never returns -- not only a dead one.
- ``/readyz``: 200 once the instance has joined its group and every assigned partition's state
  is restored from the changelog; 503 before (a readiness probe keeps traffic/alerts away).
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

LIVENESS_TIMEOUT_S = 120.0


class HealthState:
    """Flags the loop sets and the probes read (plain attributes: one writer thread)."""

    def __init__(self, liveness_timeout_s: float = LIVENESS_TIMEOUT_S) -> None:
        self.alive = False
        self.ready = False
        self.liveness_timeout_s = liveness_timeout_s
        self.last_beat = time.monotonic()

    def beat(self, now: float | None = None) -> None:
        """The loop completed an iteration (or a restore step) at ``now`` (monotonic)."""
        self.last_beat = time.monotonic() if now is None else now

    @property
    def live(self) -> bool:
        """Alive, and beating within the liveness deadline."""
        return self.alive and time.monotonic() - self.last_beat <= self.liveness_timeout_s


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
        "/healthz": lambda: _probe(state.live, "alive"),
        "/readyz": lambda: _probe(state.ready, "ready"),
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
    return (
        (200, "text/plain", f"{what}\n".encode())
        if ok
        else (503, "text/plain", f"not {what}\n".encode())
    )
