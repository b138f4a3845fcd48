"""``/metrics``, ``/healthz`` and ``/readyz`` on one HTTP port, served from a daemon thread.

- ``/healthz``: 200 while the processing loop is alive *and* has completed an iteration (or
  made restore progress) within ``liveness_timeout_s`` (default 120 s): a liveness probe then
  restarts a loop that is wedged -- stuck in a call that never returns -- not only a dead one.
- ``/readyz``: 200 once the instance has joined its group and every assigned partition's state
  is restored from the changelog; 503 before (a readiness probe keeps traffic/alerts away), and
  503 while the scorer is stalled by a broker outage (ARCHITECTURE.md §5: it waits, within
  ``--outage-patience-s``; ``/healthz`` keeps passing then, since restarting would not help).
- ``/metrics``: the Prometheus exposition of :class:`consumer.metrics.ScorerMetrics`.
- ``/loans/{loan_id}``: one loan as JSON (:class:`consumer.lookup.LoanLookup`, ARCHITECTURE.md
  §9); with a token, only for ``Authorization: Bearer <token>`` (401 otherwise: the answer
  carries personal data). The probes and ``/metrics`` stay open. Every answer is counted in
  ``loanrec_lookup_requests_total{status}`` (the HTTP code).

Bound to 127.0.0.1 unless told otherwise (``--http-host``).

Example::

    >>> from consumer.metrics import ScorerMetrics
    >>> server = HealthServer(ScorerMetrics(), host="127.0.0.1", port=0)
    >>> server.port > 0
    True
    >>> server.close()
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST

from consumer.lookup import PREFIX, LoanLookup, bearer_ok, error_body
from consumer.metrics import ScorerMetrics

if TYPE_CHECKING:
    from consumer.lookup import Partitions

# /healthz fails when the loop has not completed an iteration for this long (§8).
LIVENESS_TIMEOUT_S = 120.0


class HealthState:
    """Flags the loop sets and the probes read (plain attributes: one writer thread), and
    what the loan lookup reads: the loop's partitions, and the lock it holds per poll.

    ``stalled_since`` (epoch seconds) and ``stalled_on`` (the Kafka call that fails) are set by
    ``consumer.checkpoint`` from the first failed commit of an outage until one succeeds."""

    def __init__(self, liveness_timeout_s: float = LIVENESS_TIMEOUT_S) -> None:
        self.alive = False
        self.ready = False
        self.partitions: Partitions | None = None
        self.lock = threading.Lock()
        self.stalled_since: float | None = None
        self.stalled_on = ""
        self.stalled_why = ""
        self.liveness_timeout_s = liveness_timeout_s
        self.last_beat = time.monotonic()

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

    def beat(self, now: float | None = None) -> None:
        """The loop completed an iteration (or a restore step) at ``now`` (monotonic)."""
        self.last_beat = time.monotonic() if now is None else now

    @property
    def live(self) -> bool:
        """Alive, and beating within the liveness deadline -- or stalled on a broker outage,
        which blocks the loop inside a commit but is no reason to restart the process
        (ARCHITECTURE.md §5: /readyz fails then, /healthz does not)."""
        if not self.alive:
            return False
        return (
            self.stalled_since is not None
            or time.monotonic() - self.last_beat <= self.liveness_timeout_s
        )


class HealthServer:
    def __init__(
        self,
        metrics: ScorerMetrics,
        host: str = "127.0.0.1",
        port: int = 0,
        state: HealthState | None = None,
        token: str | None = None,
    ) -> None:
        self.state = state or HealthState()
        self.lookup: LoanLookup | None = None  # set once the input's partition count is known
        self._server = ThreadingHTTPServer((host, port), _handler(metrics, self, token))
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    metrics: ScorerMetrics, server: HealthServer, token: str | None
) -> type[BaseHTTPRequestHandler]:
    state = server.state
    routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, metrics.exposition()),
        "/healthz": lambda: _probe(state.live, "alive" if state.live else "not alive"),
        "/readyz": lambda: _probe(*state.readiness()),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path.startswith(PREFIX):
                self._loan(unquote(path[len(PREFIX) :]))
                return
            route = routes.get(path)
            status, content_type, body = route() if route else (404, "text/plain", b"not found\n")
            self._send(status, content_type, body)

        def _loan(self, loan_id: str) -> None:
            headers: dict[str, str] = {}
            if not bearer_ok(self.headers.get("Authorization"), token):
                status, body = 401, error_body(401, "bearer token required")
                headers["WWW-Authenticate"] = 'Bearer realm="loans"'
            elif server.lookup is None:
                status, body = 503, error_body(503, "not started")
            else:
                try:
                    status, body, headers = server.lookup.answer(loan_id)
                except Exception as error:  # a lookup bug must not look like an unknown loan
                    status, body = 500, error_body(500, f"{type(error).__name__}: {error}")
            payload = json.dumps(body, separators=(",", ":")).encode()
            metrics.lookup_requests.labels(status=str(status)).inc()  # (a client gone: counted)
            self._send(status, "application/json", payload, headers)

        def _send(
            self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:  # scrapes are not events of interest
            pass

    return Handler


def _probe(ok: bool, what: str) -> tuple[int, str, bytes]:
    return (200 if ok else 503), "text/plain", f"{what}\n".encode()
