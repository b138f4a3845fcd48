"""A token bucket for ``--rate`` (events per second).

The producer asks for a whole chunk of tokens at once, so the limiter costs one call per chunk,
not per event. The bucket holds at most ``burst`` tokens, so after an idle pause the stream
catches up by at most one burst instead of flooding the broker.

Example::

    >>> bucket = TokenBucket(rate=1000.0, burst=100, clock=lambda: 0.0, sleep=lambda s: None)
    >>> bucket.wait_time(100)     # a full bucket pays for the first burst at once
    0.0
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 events/s")
        self.rate = float(rate)
        # Default burst: a tenth of a second of traffic, at least one event.
        self.burst = float(burst) if burst is not None else max(1.0, self.rate / 10)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def wait_time(self, n: float) -> float:
        """Seconds until ``n`` tokens are available (0 if they are)."""
        self._refill()
        missing = n - self._tokens
        return 0.0 if missing <= 0 else missing / self.rate

    def acquire(self, n: float, stop: Callable[[], bool] = lambda: False) -> bool:
        """Block until ``n`` tokens are available, then take them. Returns False (taking
        nothing) if ``stop()`` turns true while waiting. ``n`` may exceed the burst: the debt
        is paid by waiting, so the long-run rate holds for any chunk size."""
        while True:
            delay = self.wait_time(min(n, self.burst))
            if delay <= 1e-6:  # float rounding must not leave us waiting for 1e-13 s forever
                self._tokens -= n
                return True
            if stop():
                return False
            self._sleep(min(delay, 0.1))  # wake up regularly to honour stop()
