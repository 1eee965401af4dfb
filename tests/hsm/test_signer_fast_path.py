"""The token connection's hot path (issue 19): the DER signature made from bytes, the
breaker read as one attribute, a lease that touches the condition variable only when
someone waits. Each must behave exactly as the slower way did."""

from __future__ import annotations

import os
import threading

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from hsm.breaker import BreakerState, CircuitBreaker
from hsm.pool import TokenPool
from hsm.signer import der_ecdsa_signature
from provisioner.ca.ceremony import CaInfo, factory_pin, load_ca, open_module
from provisioner.errors import HsmError, HsmUnavailableError
from provisioner.settings import Settings


@pytest.mark.parametrize("half", [32, 48])
def test_der_signature_from_bytes_is_what_cryptography_encodes(half: int) -> None:
    cases = [os.urandom(2 * half) for _ in range(200)]
    edges = [
        b"\x00" * (half - 1) + b"\x01",  # one significant byte
        b"\x00" * half,  # zero (never a valid ECDSA value, still encoded alike)
        b"\x80" + b"\x00" * (half - 1),  # top bit set: a leading 0x00
        b"\x00\x80" + b"\x01" * (half - 2),  # a zero byte, then the top bit set
        b"\x00\x00\x7f" + b"\xff" * (half - 3),
        b"\xff" * half,
    ]
    cases += [a + b for a in edges for b in edges]
    for raw in cases:
        r = int.from_bytes(raw[:half], "big")
        s = int.from_bytes(raw[half:], "big")
        assert der_ecdsa_signature(raw) == encode_dss_signature(r, s), raw.hex()


@pytest.mark.parametrize("length", [0, 1, 63, 98, 132])
def test_der_signature_refuses_what_is_not_two_halves(length: int) -> None:
    with pytest.raises(HsmError, match="ECDSA signature of"):
        der_ecdsa_signature(b"\x01" * length)


def test_the_breakers_flag_follows_its_state() -> None:
    state = {"back": False}

    def reconnect() -> None:
        if not state["back"]:
            raise HsmError("still gone")

    br = CircuitBreaker("t", reconnect, base_delay_s=0.0)
    assert br.is_open is False and br.status.state is BreakerState.CLOSED
    br.before_call()  # closed: nothing happens
    err = br.trip(RuntimeError("pulled"))
    assert isinstance(err, HsmUnavailableError)
    assert br.is_open is True and br.status.state is BreakerState.OPEN
    assert br.try_reconnect() is False
    assert br.is_open is True
    with pytest.raises(HsmUnavailableError):
        br.before_call()  # due (no delay), reconnect fails again
    state["back"] = True
    br.before_call()  # due, reconnects
    assert br.is_open is False and br.status.state is BreakerState.CLOSED
    assert br.status.trips == 1


def test_a_caller_waiting_for_the_only_session_gets_it_when_it_is_returned(
    ca_settings: Settings, ca: CaInfo
) -> None:
    """Releases notify only when someone waits: a waiter must still be woken (long before
    the acquire timeout), and run after the holder, in turn."""
    with open_module(ca_settings):
        pass  # writes the SoftHSM configuration for this test's token dir
    pool = TokenPool(
        ca_settings.hsm.module, "factory", factory_pin(ca_settings), size=1, acquire_timeout_s=60
    ).open()
    order: list[str] = []
    try:
        holding = threading.Event()
        release = threading.Event()
        waiting = threading.Event()

        def hold() -> None:
            def fn(_ts: object) -> None:
                holding.set()
                release.wait(30)
                order.append("holder")

            pool.run(fn)

        def wait_for_it() -> None:
            waiting.set()
            pool.run(lambda _ts: order.append("waiter"))

        holder = threading.Thread(target=hold)
        holder.start()
        assert holding.wait(30)
        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        assert waiting.wait(30)
        # The waiter is blocked on the pool (one session, held): nothing has run yet.
        for _ in range(1000):
            with pool._lock:
                if pool._waiting:
                    break
            threading.Event().wait(0.01)
        assert pool._waiting == 1 and order == []
        release.set()
        holder.join(30)
        waiter.join(30)
        assert not waiter.is_alive(), "the waiter was not woken by the release"
        assert order == ["holder", "waiter"]
        assert pool._waiting == 0
    finally:
        release.set()
        pool.close()


def test_signing_through_the_pool_after_the_changes(ca_settings: Settings, ca: CaInfo) -> None:
    """The token key still signs through the pool, from several threads at once."""
    loaded = load_ca(ca_settings)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(30):
                sig = loaded.key.sign(b"payload", ec.ECDSA(hashes.SHA256()))
                loaded.key.public_key().verify(sig, b"payload", ec.ECDSA(hashes.SHA256()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        loaded.close()
    assert errors == []
    assert loaded.pool._waiting == 0
