"""Requests per minute per client address, for the device endpoints.

Those endpoints take a secret (an enrollment or device token) from anyone on the network:
a limit per address makes guessing hopeless and keeps a replaying client from filling the
audit trail with refusals. A token bucket per address: ``per_minute`` requests at once,
then one more every ``60 / per_minute`` seconds. The limiter is an object the router owns
(no module state); it forgets full buckets when it holds too many addresses.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

MAX_ADDRESSES = 10_000


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int:
        """Take one request for ``address``: 0 when it may go on, else the whole seconds to
        wait (what ``Retry-After`` says)."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(address, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[address] = (tokens - 1.0, now)
                self._prune(now)
                return 0
            self._buckets[address] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))

    def _prune(self, now: float) -> None:
        if len(self._buckets) <= MAX_ADDRESSES:
            return
        full = [
            a for a, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.capacity
        ]
        for a in full:
            del self._buckets[a]
