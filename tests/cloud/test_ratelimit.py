"""The shared create pacing: slots handed out by a real redis-server to several processes
and threads are distinct and exactly one interval apart, so no 60-second window holds more
than the configured rate; the in-process fallback keeps the same rule."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from provisioner.uploads.ratelimit import LocalPacer, RedisPacer

RATE = 3000.0  # per minute: one slot every 20 ms


@pytest.fixture
def redis_sock(tmp_path: Path) -> Iterator[str]:
    sock = tmp_path / "r.sock"
    exe = shutil.which("redis-server")
    assert exe, "redis-server is installed by make install"
    proc = subprocess.Popen(
        [exe, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait(10)


def _take(sock: str, n: int, out: mp.Queue[list[int]]) -> None:
    pacer = RedisPacer(redis.Redis(unix_socket_path=sock), "reg", RATE)
    out.put([pacer.take()[0] for _ in range(n)])


def test_slots_from_redis_are_shared_and_evenly_spaced(redis_sock: str) -> None:
    ctx = mp.get_context("spawn")
    q: mp.Queue[list[int]] = ctx.Queue()
    procs = [ctx.Process(target=_take, args=(redis_sock, 150, q)) for _ in range(3)]
    for p in procs:
        p.start()
    slots: list[int] = []
    pacer = RedisPacer(redis.Redis(unix_socket_path=redis_sock), "reg", RATE)
    threads = [
        threading.Thread(target=lambda: slots.extend(pacer.take()[0] for _ in range(50)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in procs:
        slots += q.get(timeout=60)
    for p in procs:
        p.join(30)
    slots.sort()
    assert len(slots) == len(set(slots)) == 550
    gaps = {b - a for a, b in itertools.pairwise(slots)}
    # Requests arrive faster than the rate, so every slot follows the previous by exactly
    # one interval (an idle gap could only make it longer, never shorter).
    assert min(gaps) == pacer.interval_us == 20_001
    # Hence any 60 s window holds at most RATE slots.
    window = 60_000_000
    j = 0
    for i, s in enumerate(slots):
        while slots[j] <= s - window:
            j += 1
        assert i - j + 1 <= RATE
    # Another registry has its own sequence.
    other = RedisPacer(redis.Redis(unix_socket_path=redis_sock), "other", RATE)
    slot, now = other.take()
    assert slot == now


def test_wait_sleeps_until_the_slot(redis_sock: str) -> None:
    slept: list[float] = []
    pacer = RedisPacer(redis.Redis(unix_socket_path=redis_sock), "w", 600.0, sleep=slept.append)
    for _ in range(5):
        pacer.wait()
    assert slept and all(0 < d <= 0.5 for d in slept)  # 100 ms apart, minus elapsed time
    assert len(slept) >= 4


def test_local_pacer_keeps_the_same_rule() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(d: float) -> None:
        slept.append(d)
        now[0] += d

    pacer = LocalPacer(RATE, clock=lambda: now[0], sleep=sleep)
    times = []
    for _ in range(7000):  # greedy callers for over two simulated minutes
        pacer.wait()
        times.append(now[0])
    j = 0
    for i, t in enumerate(times):
        while times[j] <= t - 60.0:
            j += 1
        assert i - j + 1 <= RATE
    achieved = (len(times) - 1) / (times[-1] - times[0]) * 60
    assert achieved >= 0.98 * RATE


def test_a_positive_rate_is_required() -> None:
    with pytest.raises(ValueError):
        LocalPacer(0)


def test_backoff_is_jittered_within_its_envelope() -> None:
    import random

    from provisioner.uploads.ratelimit import backoff_s

    rng = random.Random(3)
    for attempt, envelope in ((0, 1.0), (3, 8.0), (10, 60.0), (60, 60.0)):
        xs = [backoff_s(attempt, rng=rng) for _ in range(2000)]
        assert all(0 <= x <= envelope for x in xs)
        assert 0.4 * envelope < sum(xs) / len(xs) < 0.6 * envelope  # uniform: mean ~ half
        assert len(set(xs)) > 1900  # jittered, not a fixed delay
