"""The hsm worker's group commit (issue 19): requests that arrive while a group is being
signed and committed form the next group, one ``sign_many``; each caller gets its own
answer, a refused one its own error."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

import pytest
from sqlmodel import select

from provisioner.db.engine import transaction
from provisioner.db.models import Certificate
from provisioner.errors import PolicyViolationError, ProvisionerError
from provisioner.issuance import GroupSigner
from provisioner.ports import IssuedCertificate, SigningRequest
from tests.core.test_sign_group_batched import Env, env  # noqa: F401  (the fixture)


def _until(cond: Callable[[], bool], what: str) -> None:
    """Wait for a state the test arranged (not a timing assertion: a deadline only)."""
    deadline = time.monotonic() + 60
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


def test_requests_in_flight_are_signed_as_one_group(
    env: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reqs = env.requests(6, 700)
    forged = dataclasses.replace(reqs[3], pop_signature=bytes(64))
    todo = [reqs[0], reqs[1], reqs[2], forged, reqs[4], reqs[5]]
    group = GroupSigner(env.svc)
    sizes: list[int] = []
    gate = threading.Event()
    real = env.svc.sign_many

    def gated(rs: Sequence[SigningRequest]) -> list[IssuedCertificate | ProvisionerError]:
        sizes.append(len(rs))
        if len(sizes) == 1:  # the first group is "being committed" until the gate opens
            assert gate.wait(60)
        return real(rs)

    monkeypatch.setattr(env.svc, "sign_many", gated)
    results: dict[int, IssuedCertificate | Exception] = {}

    def call(k: int) -> None:
        try:
            results[k] = group.sign(todo[k])
        except Exception as exc:  # the caller's answer, checked below
            results[k] = exc

    first = threading.Thread(target=call, args=(0,))
    first.start()
    _until(lambda: sizes == [1], "the first request leads alone")
    rest = [threading.Thread(target=call, args=(k,)) for k in range(1, 6)]
    for t in rest:
        t.start()
    _until(lambda: group.pending() == 5, "five requests queued behind it")
    gate.set()
    for t in [first, *rest]:
        t.join(60)
    assert sizes == [1, 5]  # the five that arrived meanwhile: one group, one transaction
    assert isinstance(results[3], PolicyViolationError)  # the forged one, alone
    issued = [results[k] for k in (0, 1, 2, 4, 5)]
    assert all(isinstance(r, IssuedCertificate) for r in issued), results
    with transaction(env.engine) as s:
        fps = set(s.exec(select(Certificate.fingerprint_sha256)).all())
    assert fps == {r.fingerprint_sha256 for r in issued if isinstance(r, IssuedCertificate)}


def test_a_lone_request_does_not_wait(env: Env) -> None:  # noqa: F811
    """Nothing in flight: signed at once as a group of one (no window to wait out)."""
    (req,) = env.requests(1, 800)
    group = GroupSigner(env.svc)
    cert = group.sign(req)
    assert group.pending() == 0
    assert env.svc.sign(req) == cert  # the same certificate: idempotent
