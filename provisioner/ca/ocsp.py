"""The OCSP responder (RFC 6960): the status of one certificate, signed in the token.

A request names a certificate by CertID: hashes of its issuer's name and key, and its
serial number. The issuer is looked up among the intermediates (current and archived:
certificates of a rotated-out intermediate stay answerable until they expire); an issuer
we do not have gets ``unauthorized`` (RFC 6960 2.3; also the root's own certificates, whose
status the root's CRL gives), an unparsable request ``malformedRequest``. The status comes
from :func:`provisioner.ca.status.certificate_status`, read from the database on every
request, the one place the CRLs read too.

Responses are signed by the intermediate's delegated responder
(:mod:`provisioner.ca.ocsp_responder_cert`), its key in the factory token and its
certificate included in the response, so a client that trusts the root verifies it with
no extra download.

Speed: a signature costs a trip to the token behind the process's one HSM lock. A request
without a nonce gets a *pre-produced* response: the first one signed for (issuer, serial,
hash algorithm, status, revocation time and reason) is kept and served again until half of
its validity (``thisUpdate`` to ``nextUpdate``, :attr:`CrlSettings.refresh_s`) has passed.
Since the status is part of the key and read fresh each time, a revocation is answered
``revoked`` at once; the cache only saves the signature. A request with a nonce
(RFC 8954: 1 to 32 octets) is signed fresh and the nonce echoed; a nonce of 33 to 128
octets is ignored (the pre-produced answer, RFC 8954 allows it) and a longer or empty one
refused as ``malformedRequest``.

The token is opened on the first request that needs a signature and kept open; any token
or database failure answers ``tryLater`` (the breaker of :class:`hsm.pool.TokenPool`
reconnects when the token is back), never a response signed by anything else.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from provisioner.ca.ocsp_responder_cert import Responder, ensure_responder
from provisioner.ca.status import CertStatus, certificate_status
from provisioner.ca.store import fingerprint
from provisioner.db.engine import reader_of
from provisioner.errors import CaNotInitialisedError, HsmError, ServiceUnavailableError
from provisioner.settings import Settings

if TYPE_CHECKING:
    from provisioner.ca.ceremony import LoadedCa

log = logging.getLogger(__name__)

ACTOR = "ocsp-responder"  # who issues a responder certificate from the API process
MAX_REQUEST_BYTES = 16 * 1024  # a CertID and a nonce fit in ~100; signed requests more
CACHE_ENTRIES = 50_000  # ~700 bytes each: bounded, so unknown serials cannot fill memory
NONCE_ECHOED = range(1, 33)  # RFC 8954 2.1: what a responder must accept
NONCE_IGNORED = range(33, 129)  # may be answered without the nonce; longer: refused
_HASHES: tuple[hashes.HashAlgorithm, ...] = (
    hashes.SHA1(),  # what `openssl ocsp` and most clients send
    hashes.SHA256(),
    hashes.SHA384(),
    hashes.SHA512(),
)


@dataclass(frozen=True)
class OcspAnswer:
    """An encoded OCSPResponse and what it says (for the HTTP headers, logs and tests)."""

    der: bytes
    outcome: str  # good | revoked | unknown | malformed_request | unauthorized | try_later ...
    this_update: datetime | None = None
    next_update: datetime | None = None
    nonce: bool = False  # signed fresh for a nonce: never to be cached by anyone
    pre_produced: bool = False  # served from the cache

    @property
    def successful(self) -> bool:
        return self.outcome in ("good", "revoked", "unknown")


@dataclass(frozen=True)
class Issuer:
    name: str  # the intermediate's key label
    certificate: x509.Certificate
    fingerprint_sha256: str


def cert_ids(cert: x509.Certificate) -> Iterator[tuple[str, bytes, bytes]]:
    """(hash name, issuerNameHash, issuerKeyHash) for every hash a CertID may use: the
    hash of the DER subject name, and of the subjectPublicKey BIT STRING's contents."""
    name = cert.subject.public_bytes()
    key = cert.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    for algorithm in _HASHES:
        yield algorithm.name, _digest(algorithm, name), _digest(algorithm, key)


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def _unsuccessful(status: ocsp.OCSPResponseStatus, outcome: str) -> OcspAnswer:
    return OcspAnswer(
        ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
            serialization.Encoding.DER
        ),
        outcome,
    )


MALFORMED = ocsp.OCSPResponseStatus.MALFORMED_REQUEST
UNAUTHORIZED = ocsp.OCSPResponseStatus.UNAUTHORIZED
TRY_LATER = ocsp.OCSPResponseStatus.TRY_LATER
INTERNAL = ocsp.OCSPResponseStatus.INTERNAL_ERROR

_CERT_STATUS = {
    "good": ocsp.OCSPCertStatus.GOOD,
    "revoked": ocsp.OCSPCertStatus.REVOKED,
    "unknown": ocsp.OCSPCertStatus.UNKNOWN,
}

_CacheKey = tuple[str, int, str, str, datetime | None, str | None]


class OcspResponder:
    """Answers DER OCSP requests for this CA's intermediates. Thread-safe; one per process
    (it holds the process's token connection once it has signed)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        hsm_lock: AbstractContextManager[object] | None = None,
        cache_entries: int = CACHE_ENTRIES,
        actor: str = ACTOR,
    ) -> None:
        if hsm_lock is None:
            from provisioner.enrollment.service import HSM_LOCK

            hsm_lock = HSM_LOCK
        self._settings = settings
        self._engine = engine
        self._status_engine = reader_of(engine)  # never takes SQLite's write lock
        self._hsm_lock = hsm_lock
        self._actor = actor
        self.validity = timedelta(seconds=settings.crl.refresh_s)
        self._cache: OrderedDict[_CacheKey, OcspAnswer] = OrderedDict()
        self._cache_entries = cache_entries
        self._cache_lock = threading.Lock()
        self._issuers_lock = threading.Lock()
        self._issuers_seen: tuple[int, ...] | None = None
        self._by_id: dict[tuple[str, bytes, bytes], Issuer] = {}
        self._ca: LoadedCa | None = None  # opened on the first signature, under hsm_lock
        self._responders: dict[str, Responder] = {}  # by intermediate fingerprint

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        with self._hsm_lock:
            if self._ca is not None:
                self._ca.close()
                self._ca = None
            self._responders.clear()
        if self._status_engine is not self._engine:
            self._status_engine.dispose()

    # --- issuers ------------------------------------------------------------------------

    def _store_stamp(self) -> tuple[int, ...]:
        """Changes whenever an intermediate is installed (rotation, import, re-init)."""
        ca_dir = self._settings.ca_dir
        out = []
        for path in (ca_dir / "intermediate.pem", ca_dir / "intermediates"):
            try:
                st = path.stat()
                out += [st.st_mtime_ns, st.st_ino]
            except OSError:
                out += [0, 0]
        return tuple(out)

    def issuers(self) -> dict[tuple[str, bytes, bytes], Issuer]:
        """Every unexpired intermediate by CertID issuer hashes, re-read when the CA's
        files change."""
        from provisioner.ca.ceremony import store_of

        stamp = self._store_stamp()
        with self._issuers_lock:
            if stamp == self._issuers_seen:
                return self._by_id
            store = store_of(self._settings)
            try:
                found = store.intermediates()
                if not found and store.intermediate_pem.exists():
                    legacy = store.current_name(self._settings.hsm.ca_key_label)
                    found = {legacy: store.intermediate()}
            except (OSError, ValueError, CaNotInitialisedError):
                log.warning("cannot read the intermediates in %s", self._settings.ca_dir)
                found = {}
            now = datetime.now(UTC)
            by_id: dict[tuple[str, bytes, bytes], Issuer] = {}
            for name, cert in found.items():
                if cert.not_valid_after_utc <= now:
                    continue
                issuer = Issuer(name, cert, fingerprint(cert))
                for cid in cert_ids(cert):
                    by_id[cid] = issuer
            self._by_id, self._issuers_seen = by_id, stamp
            return by_id

    # --- cache --------------------------------------------------------------------------

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    def _cached(self, key: _CacheKey, now: datetime) -> OcspAnswer | None:
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is None:
                return None
            assert hit.this_update is not None
            if now - hit.this_update >= self.validity / 2:
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return hit

    def _keep(self, key: _CacheKey, answer: OcspAnswer) -> None:
        with self._cache_lock:
            self._cache[key] = replace(answer, pre_produced=True)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)

    # --- answering ----------------------------------------------------------------------

    def respond(self, der: bytes, now: datetime | None = None) -> OcspAnswer:
        """The DER OCSPResponse to a DER OCSPRequest; never raises for what a client sends
        or for a token or database failure (those are ``tryLater``)."""
        try:
            return self._respond(der, now or datetime.now(UTC))
        except (HsmError, ServiceUnavailableError, CaNotInitialisedError, SQLAlchemyError) as exc:
            log.warning("OCSP: answering tryLater: %s", type(exc).__name__)
            return _unsuccessful(TRY_LATER, "try_later")
        except Exception:
            log.exception("OCSP: internal error")
            return _unsuccessful(INTERNAL, "internal_error")

    def _respond(self, der: bytes, now: datetime) -> OcspAnswer:
        if not der or len(der) > MAX_REQUEST_BYTES:
            return _unsuccessful(MALFORMED, "malformed_request")
        try:
            req = ocsp.load_der_ocsp_request(der)
            algorithm = req.hash_algorithm
            nonce = _nonce(req)
        except (ValueError, UnsupportedAlgorithm, NotImplementedError):
            return _unsuccessful(MALFORMED, "malformed_request")
        issuer = self.issuers().get((algorithm.name, req.issuer_name_hash, req.issuer_key_hash))
        if issuer is None:
            return _unsuccessful(UNAUTHORIZED, "unauthorized")
        with Session(self._status_engine) as s:
            status = certificate_status(
                s, issuer.fingerprint_sha256, req.serial_number, issuer=issuer.certificate
            )
        if nonce is None:
            key: _CacheKey = (
                issuer.fingerprint_sha256,
                req.serial_number,
                algorithm.name,
                status.status,
                status.revoked_at,
                status.reason,
            )
            hit = self._cached(key, now)
            if hit is not None:
                return hit
            answer = self._sign(issuer, req, algorithm, status, None, now)
            self._keep(key, answer)
            return answer
        return self._sign(issuer, req, algorithm, status, nonce, now)

    def _sign(
        self,
        issuer: Issuer,
        req: ocsp.OCSPRequest,
        algorithm: hashes.HashAlgorithm,
        status: CertStatus,
        nonce: bytes | None,
        now: datetime,
    ) -> OcspAnswer:
        from provisioner.ca.revocation import REASONS

        this_update = now.replace(microsecond=0)
        next_update = this_update + self.validity
        reason = None
        if status.status == "revoked" and status.reason not in (None, "unspecified"):
            reason = REASONS.get(status.reason or "")  # RFC 5280: no reason for unspecified
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=req.issuer_name_hash,
            issuer_key_hash=req.issuer_key_hash,
            serial_number=req.serial_number,
            algorithm=algorithm,
            cert_status=_CERT_STATUS[status.status],
            this_update=this_update,
            next_update=next_update,
            revocation_time=status.revoked_at if status.status == "revoked" else None,
            revocation_reason=reason,
        )
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        with self._hsm_lock:
            responder = self._responder(issuer, now)
            signed = (
                builder.responder_id(ocsp.OCSPResponderEncoding.HASH, responder.certificate)
                .certificates([responder.certificate])
                .sign(responder.key, hashes.SHA256())
            )
        return OcspAnswer(
            signed.public_bytes(serialization.Encoding.DER),
            status.status,
            this_update,
            next_update,
            nonce=nonce is not None,
        )

    def _responder(self, issuer: Issuer, now: datetime) -> Responder:
        """The responder of ``issuer``, opening the token and issuing or renewing its
        certificate when needed. Called under the HSM lock."""
        from provisioner.ca.ceremony import load_ca

        known = self._responders.get(issuer.fingerprint_sha256)
        if known is not None and now < known.renew_at:
            return known
        if self._ca is None:
            self._ca = load_ca(self._settings)
        responder = ensure_responder(
            self._settings,
            self._engine,
            self._ca.pool,
            issuer.name,
            issuer.certificate,
            self._actor,
            now=now,
        )
        if known is not None and known.certificate != responder.certificate:
            self.clear_cache()  # signed by the old certificate: produce them again
        self._responders[issuer.fingerprint_sha256] = responder
        return responder


def _nonce(req: ocsp.OCSPRequest) -> bytes | None:
    """The request's nonce to echo, None to answer without one; ValueError: refuse."""
    try:
        value = req.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None
    if len(value) in NONCE_ECHOED:
        return value
    if len(value) in NONCE_IGNORED:
        return None
    raise ValueError("nonce length outside 1..128 octets")
