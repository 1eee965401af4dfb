"""The signer's token connection: session pool, circuit breaker, reconnect, RSA keys, PINs.

Token loss is real: the SoftHSM token directory is moved away under a logged-in process
(what a pulled USB HSM looks like to the module: handles go invalid, slot listing fails)
and moved back."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from sqlmodel import select

from hsm.breaker import BreakerState, BreakerStatus, CircuitBreaker
from hsm.keys import KeyAlgorithm, KeyRef, generate, key_attributes
from hsm.pins import PinSource
from hsm.pool import TokenPool
from hsm.signer import HsmRsaPrivateKey, token_key
from provisioner.ca.ceremony import CaInfo, factory_pin, load_ca, open_module
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import AuditEvent
from provisioner.errors import HsmBusyError, HsmError, HsmUnavailableError
from provisioner.issuance import IssuanceService
from provisioner.settings import Settings


def _away(settings: Settings) -> Path:
    return settings.token_dir.with_name("tokens.pulled")


def pull_token(settings: Settings) -> None:
    shutil.move(settings.token_dir, _away(settings))


def put_back_token(settings: Settings) -> None:
    shutil.move(_away(settings), settings.token_dir)


def _ecdsa(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.sign(b"payload", ec.ECDSA(hashes.SHA256()))


@pytest.fixture
def fast_settings(ca_settings: Settings, ca: CaInfo) -> Settings:
    """The test CA with a quick reconnect backoff."""
    hsm = ca_settings.hsm.model_copy(update={"retry_base_s": 0.2, "retry_max_s": 0.5})
    return ca_settings.model_copy(update={"hsm": hsm})


def test_token_loss_stops_signing_and_it_resumes_by_itself(fast_settings: Settings) -> None:
    seen: list[BreakerStatus] = []
    ca = load_ca(fast_settings, on_change=seen.append)
    try:
        ca.key.public_key().verify(_ecdsa(ca.key), b"payload", ec.ECDSA(hashes.SHA256()))
        pull_token(fast_settings)
        with pytest.raises(HsmUnavailableError, match="unavailable"):
            _ecdsa(ca.key)
        assert ca.status.state is BreakerState.OPEN and ca.status.trips == 1
        # While open, calls fail fast and never fall back to anything.
        with pytest.raises(HsmUnavailableError):
            _ecdsa(ca.key)
        ca.pool.breaker.start_background_retry(poll_s=0.05)
        time.sleep(1.0)  # reconnects keep failing while the token is away
        assert ca.status.state is BreakerState.OPEN
        assert ca.status.reconnect_attempts >= 1
        put_back_token(fast_settings)
        deadline = time.monotonic() + 10
        while ca.status.state is BreakerState.OPEN and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ca.status.state is BreakerState.CLOSED
        sig = _ecdsa(ca.key)  # a fresh session and key handle after the reconnect
        ca.key.public_key().verify(sig, b"payload", ec.ECDSA(hashes.SHA256()))
    finally:
        ca.close()
    assert [s.state for s in seen] == [BreakerState.OPEN, BreakerState.CLOSED]
    assert seen[0].last_error and "ObjectHandleInvalid" in seen[0].last_error


def test_signer_audits_token_loss_and_recovery(fast_settings: Settings) -> None:
    engine = make_engine(fast_settings.db_url)
    create_schema(engine)
    svc = IssuanceService.open(engine, fast_settings)
    try:
        pull_token(fast_settings)
        with pytest.raises(HsmUnavailableError):
            _ecdsa(svc.ca.key)
        status_files = list((fast_settings.var / "run").glob("hsm-signer-*.json"))
        assert len(status_files) == 1 and '"state": "open"' in status_files[0].read_text()
        put_back_token(fast_settings)
        deadline = time.monotonic() + 10
        while svc.ca.status.state is BreakerState.OPEN and time.monotonic() < deadline:
            time.sleep(0.05)
        assert '"state": "closed"' in status_files[0].read_text()
    finally:
        svc.close()
    with transaction(engine) as s:
        events = [e.event_type for e in s.exec(select(AuditEvent).order_by(AuditEvent.seq))]
        payloads = [e.payload for e in s.exec(select(AuditEvent))]
    assert events == ["hsm.unavailable", "hsm.recovered"]
    pin = fast_settings.pin_file.read_text().strip()
    assert all(pin not in p for p in payloads)
    assert not status_files[0].exists()  # removed when the signer closes


def test_breaker_backoff_doubles_and_is_bounded() -> None:
    now = [0.0]
    attempts: list[float] = []

    def reconnect() -> None:
        attempts.append(now[0])
        raise HsmError("still gone")

    br = CircuitBreaker("t", reconnect, base_delay_s=1.0, max_delay_s=4.0, clock=lambda: now[0])
    br.trip(HsmError("lost"))
    for t in range(20):
        now[0] = float(t)
        with contextlib.suppress(HsmUnavailableError):
            br.before_call()
    # at once, then +1 -> 1, +2 -> 3, +4 -> 7, then capped at +4 -> 11, 15, 19
    assert attempts == [0.0, 1.0, 3.0, 7.0, 11.0, 15.0, 19.0]


def test_a_dropped_session_comes_back_within_the_same_call(
    ca_settings: Settings, ca: CaInfo
) -> None:
    seen: list[BreakerStatus] = []
    loaded = load_ca(ca_settings, on_change=seen.append)
    try:
        _ecdsa(loaded.key)
        persistent = loaded.pool._persistent
        assert persistent is not None
        persistent.session.close()  # the HSM drops our (logged-in) session
        sig = _ecdsa(loaded.key)  # reconnects (re-initialise, log in) and signs
        loaded.key.public_key().verify(sig, b"payload", ec.ECDSA(hashes.SHA256()))
        assert loaded.status.state is BreakerState.CLOSED and loaded.status.trips == 1
    finally:
        loaded.close()
    assert [s.state for s in seen] == [BreakerState.OPEN, BreakerState.CLOSED]


def test_acquire_timeout_when_every_session_is_busy(ca_settings: Settings, ca: CaInfo) -> None:
    with open_module(ca_settings):
        pass  # writes the SoftHSM configuration for this test's token dir
    pool = TokenPool(
        ca_settings.hsm.module, "factory", factory_pin(ca_settings), size=1, acquire_timeout_s=0.3
    ).open()
    try:
        holding = threading.Event()
        release = threading.Event()

        def hold() -> None:
            with pool.lease():
                holding.set()
                release.wait(5)

        t = threading.Thread(target=hold)
        t.start()
        holding.wait(5)
        start = time.monotonic()
        with pytest.raises(HsmBusyError, match="stayed busy"), pool.lease():
            pass
        assert 0.25 <= time.monotonic() - start < 3
        release.set()
        t.join()
        with pool.lease() as ts:  # free again
            assert ts.token_label == "factory"
    finally:
        pool.close()


def test_pool_signs_from_several_threads(ca_settings: Settings, ca: CaInfo) -> None:
    ca_loaded = load_ca(ca_settings)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                sig = _ecdsa(ca_loaded.key)
                ca_loaded.key.public_key().verify(sig, b"payload", ec.ECDSA(hashes.SHA256()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        ca_loaded.close()
    assert errors == []


@pytest.mark.parametrize("algorithm", [KeyAlgorithm.RSA_2048, KeyAlgorithm.RSA_3072])
def test_rsa_keys_are_generated_inside_and_sign_certificates(
    ca_settings: Settings, ca: CaInfo, algorithm: KeyAlgorithm
) -> None:
    with open_module(ca_settings) as mod:
        ts = mod.open_token("factory", factory_pin(ca_settings))
        try:
            ref = KeyRef(f"test-{algorithm}", b"\x42" + algorithm.encode())
            generate(ts, ref, algorithm)
            assert key_attributes(ts, ref) == {
                "sensitive": True,
                "extractable": False,
                "always_sensitive": True,
                "never_extractable": True,
                "token": True,
            }
            key = token_key(ts, ref)
            assert isinstance(key, HsmRsaPrivateKey)
            pub = key.public_key()
            assert pub.key_size == algorithm.rsa_bits
            assert pub.public_numbers().e == 65537
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa test")])
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(name)
                .sign(key, hashes.SHA256())
            )
            assert csr.is_signature_valid
            sig = key.sign(b"m", padding.PKCS1v15(), hashes.SHA384())
            pub.verify(sig, b"m", padding.PKCS1v15(), hashes.SHA384())
            with pytest.raises(HsmError, match=r"PKCS#1 v1\.5"):
                key.sign(
                    b"m",
                    padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH),
                    hashes.SHA256(),
                )
            with pytest.raises(HsmError, match="cannot be exported"):
                key.private_numbers()
            assert isinstance(key, rsa.RSAPrivateKey)
        finally:
            ts.close()


def test_prompt_pin_source_needs_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(HsmError, match="no terminal"):
        PinSource.parse("prompt", "factory").read()


def test_pin_source_forms(tmp_path: Path) -> None:
    pin = tmp_path / "p.pin"
    pin.write_text("123456\n")
    assert PinSource.parse(f"file:{pin}").read() == "123456"
    assert PinSource.parse(f"file://{pin}").read() == "123456"
    assert PinSource.parse(str(pin)).read() == "123456"
    assert "123456" not in repr(PinSource.parse(str(pin)))
    with pytest.raises(HsmError, match="does not exist") as err:
        PinSource.parse(str(tmp_path / "nope")).read()
    assert "123456" not in str(err.value)
