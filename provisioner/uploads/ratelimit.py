"""One create rate per registry, shared by every uploader on the station.

Cloud IoT and ClearBlade allow 3,000 device creates per minute per project and answer
RESOURCE_EXHAUSTED beyond that. Uploads run in several Celery worker processes, the
periodic store-and-forward thread and ``registry sync``; a bucket in each would multiply
the rate. So the limit lives in Redis (the broker every station already runs), as a GCRA
("generic cell rate algorithm", a token bucket kept as one timestamp): each create takes the
next free slot ``60 / rate`` seconds after the previous one, atomically in a Lua script, and
waits for it. Slots evenly spaced at the configured rate never put more than ``rate``
creates in any 60-second window, so a registry that enforces that rate never throttles us.

Without Redis (a ``registry sync`` with the station's services stopped) the same algorithm
runs in-process.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from provisioner.metrics import record

# KEYS[1]: the registry's slot key. ARGV[1]: interval (µs). Returns {slot, now} in µs of
# Redis time (every process agrees on "now"); the caller waits slot - now.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
-- %.0f, not tostring: tostring keeps 14 digits and would round a µs timestamp (16 digits)
redis.call('SET', KEYS[1], string.format('%.0f', tat + interval), 'PX',
           math.ceil(interval / 1000) + 60000)
return {tat, now}
"""


class Pacer(Protocol):
    def wait(self) -> float:
        """Block until this caller's slot; returns the seconds waited."""
        ...


class RedisPacer:
    """The shared slot sequence of one registry, in Redis."""

    def __init__(
        self,
        client: Any,
        key: str,
        rate_per_minute: float,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_minute <= 0:
            raise ValueError("the rate must be positive")
        self._script = client.register_script(_GCRA)
        self.key = f"provisioner:pace:{key}"
        # +1 µs: N slots exactly 60/N apart would put N + 1 in a closed 60 s window.
        self.interval_us = math.ceil(60_000_000 / rate_per_minute) + 1
        self._sleep = sleep

    def take(self) -> tuple[int, int]:
        """The next free slot and Redis's "now", in µs (without waiting)."""
        slot, now = self._script(keys=[self.key], args=[self.interval_us])
        return int(slot), int(now)

    def wait(self) -> float:
        slot, now = self.take()
        delay = (slot - now) / 1_000_000
        if delay > 0:
            self._sleep(delay)
        record.pace_wait(delay)
        return delay


class LocalPacer:
    """The same slots, for one process (no Redis)."""

    def __init__(
        self,
        rate_per_minute: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_minute <= 0:
            raise ValueError("the rate must be positive")
        self.interval = 60.0 / rate_per_minute + 1e-6  # see RedisPacer.interval_us
        self._clock, self._sleep = clock, sleep
        self._tat = 0.0
        self._lock = threading.Lock()

    def wait(self) -> float:
        with self._lock:
            now = self._clock()
            slot = max(self._tat, now)
            self._tat = slot + self.interval
        delay = slot - now
        if delay > 0:
            self._sleep(delay)
        record.pace_wait(delay)
        return delay


def backoff_s(attempt: int, base_s: float = 1.0, cap_s: float = 60.0, rng: Any = None) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): "full jitter", uniform in
    [0, min(cap, base * 2**attempt)], so uploaders that failed together do not come back
    together (AWS Architecture Blog, "Exponential Backoff And Jitter")."""
    import random

    envelope = min(cap_s, base_s * 2 ** min(attempt, 32))
    return float((rng or random).uniform(0, envelope))
