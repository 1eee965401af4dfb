"""Hypothesis settings for the parser properties: bounded, so `make test` stays in budget.

No example database (nothing is written under the work tree, and a failure found once is
reproduced from the seed hypothesis prints, not from a cache a CI runner does not keep) and
no deadline (a shared CI core makes per-example timing meaningless; the bound is the example
count). ``derandomize`` keeps a run reproducible: the same examples every time, so a green
build stays green unless the code changed.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def bounded(max_examples: int) -> settings:
    """Settings for one property: at most ``max_examples`` examples, no deadline."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


def mutate(data: bytes, at: int, xor: int) -> bytes:
    """``data`` with the byte at ``at`` (modulo its length) XORed with ``xor`` (1-255)."""
    i = at % len(data)
    return data[:i] + bytes([data[i] ^ xor]) + data[i + 1 :]
