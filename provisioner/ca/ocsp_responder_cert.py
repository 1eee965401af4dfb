"""The OCSP responder's delegated signing certificate, one per intermediate.

Why delegated (RFC 6960 4.2.2.2) and not the intermediate's own key: an OCSP responder
signs on every request it cannot answer from its cache, in the API process, reachable by
anyone. The intermediate key signs certificates; it should sign as little else as
possible, and never because a stranger asked. So each intermediate ``<name>`` certifies a
key of its own in the factory token, labelled ``ocsp-<name>`` (generated there: sensitive,
never extractable, like every key of the CA), for id-kp-OCSPSigning only.

The certificate is short-lived (:data:`VALIDITY`, 30 days) and carries id-pkix-ocsp-nocheck:
relying parties do not ask about the responder's own status, so its only revocation is its
expiry. It is renewed (same key, new certificate) once less than :data:`RENEW_BEFORE` is
left, by whoever uses it first (:func:`ensure_responder`: the API's responder on a request,
or ``provisioner ocsp responders``); an intermediate whose certificates are all expired (it
is expired itself) gets none.

Files: ``<var>/ca/ocsp/<name>.pem``, public (and ``.lock``, held while one is made). A
file that no longer verifies against its intermediate, belongs to another key or is near
expiry is simply replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy.engine import Engine

from hsm.keys import KeyAlgorithm, KeyRef, generate, key_labels
from hsm.signer import HsmEcPrivateKey, SessionProvider
from provisioner.audit import chain
from provisioner.ca.leaf import leaf_builder, signed
from provisioner.ca.store import fingerprint
from provisioner.db.engine import transaction
from provisioner.errors import HsmKeyNotFoundError
from provisioner.settings import Settings

VALIDITY = timedelta(days=30)
RENEW_BEFORE = timedelta(days=10)
LABEL_PREFIX = "ocsp-"


def responder_label(ca_name: str) -> str:
    """The token label of the responder key of intermediate ``ca_name``."""
    return f"{LABEL_PREFIX}{ca_name}"


def cert_path(settings: Settings, ca_name: str) -> Path:
    return settings.ca_dir / "ocsp" / f"{ca_name}.pem"


@dataclass(frozen=True)
class Responder:
    """A responder certificate and its key in the token, ready to sign responses."""

    ca_name: str
    certificate: x509.Certificate
    key: HsmEcPrivateKey
    issued: bool  # this call issued (or renewed) the certificate
    key_created: bool  # this call generated the key

    @property
    def renew_at(self) -> datetime:
        return self.certificate.not_valid_after_utc - RENEW_BEFORE


def _key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _common_name(ca_name: str) -> str:
    return f"OCSP {ca_name}"[:64]  # a CN holds 64 characters, a key label 63


def build_responder_certificate(
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    ca_name: str,
    organization: str,
    now: datetime,
) -> x509.Certificate:
    """The delegated responder certificate for ``issuer``: EKU OCSPSigning only,
    ocsp-nocheck, :data:`VALIDITY` (never past the issuer's own expiry). Checked against
    ``issuer`` before it is released."""
    builder = leaf_builder(
        issuer,
        public_key,
        organization=organization,
        common_name=_common_name(ca_name),
        usages=[ExtendedKeyUsageOID.OCSP_SIGNING],
        now=now,
        not_after=min(now + VALIDITY, issuer.not_valid_after_utc),
        usage=_key_usage(),
    ).add_extension(x509.OCSPNoCheck(), critical=False)
    return signed(
        builder, issuer_key, issuer, what="the OCSP responder certificate", against=repr(ca_name)
    )


def load_current(
    settings: Settings,
    ca_name: str,
    issuer: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey | None,
    now: datetime,
) -> x509.Certificate | None:
    """The stored responder certificate if it is still good to sign with: issued by
    ``issuer`` for ``public_key`` (when given) and more than :data:`RENEW_BEFORE` left."""
    path = cert_path(settings, ca_name)
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return None
    if public_key is not None and cert.public_key() != public_key:
        return None
    if cert.not_valid_after_utc - now <= RENEW_BEFORE and cert.not_valid_after_utc < (
        issuer.not_valid_after_utc
    ):
        return None
    if cert.not_valid_after_utc <= now:
        return None
    return cert


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def ensure_responder(
    settings: Settings,
    engine: Engine,
    provider: SessionProvider,
    ca_name: str,
    issuer: x509.Certificate,
    actor: str,
    *,
    now: datetime | None = None,
) -> Responder:
    """The responder of intermediate ``ca_name`` (its key in ``provider``'s token, the
    factory token), generating the key and issuing or renewing the certificate when needed;
    each issue is audited (``ca.ocsp_responder_issued``). The caller serialises token use
    (:data:`provisioner.enrollment.service.HSM_LOCK`)."""
    now = now or datetime.now(UTC)
    with _across_processes(settings):
        return _ensure(settings, engine, provider, ca_name, issuer, actor, now)


@contextlib.contextmanager
def _across_processes(settings: Settings) -> Iterator[None]:
    """One process at a time may create a responder key: the API and `provisioner ocsp
    responders` racing would leave two undestroyable keys under one label, which no
    signer could then tell apart."""
    folder = settings.ca_dir / "ocsp"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _ensure(
    settings: Settings,
    engine: Engine,
    provider: SessionProvider,
    ca_name: str,
    issuer: x509.Certificate,
    actor: str,
    now: datetime,
) -> Responder:
    label = responder_label(ca_name)
    labels = provider.run(key_labels)
    if ca_name not in labels:
        raise HsmKeyNotFoundError(
            f"no key {ca_name!r} in token {provider.token_label!r}: the intermediate cannot "
            "certify an OCSP responder"
        )
    key_created = False
    if label not in labels:
        provider.run(lambda ts: generate(ts, KeyRef(label, os.urandom(16)), KeyAlgorithm.EC_P256))
        key_created = True
    key = HsmEcPrivateKey(provider, label)
    cert = None if key_created else load_current(settings, ca_name, issuer, key.public_key(), now)
    if cert is not None:
        return Responder(ca_name, cert, key, issued=False, key_created=False)
    issuer_key = HsmEcPrivateKey(provider, ca_name)
    if issuer_key.public_key() != issuer.public_key():
        raise HsmKeyNotFoundError(
            f"key {ca_name!r} in token {provider.token_label!r} does not belong to its "
            "intermediate certificate"
        )
    cert = build_responder_certificate(
        issuer, issuer_key, key.public_key(), ca_name, settings.profile.organization, now
    )
    with transaction(engine) as s:
        chain.append(
            s,
            "ca.ocsp_responder_issued",
            actor=actor,
            payload={
                "ca": ca_name,
                "key": label,
                "key_created": key_created,
                "serial_number": format(cert.serial_number, "x"),
                "fingerprint_sha256": fingerprint(cert),
                "not_after": cert.not_valid_after_utc.isoformat(),
            },
        )
    # Written after the audit event commits: a failure here costs a second, audited, issue
    # next time, never a certificate in use that the trail does not show.
    _write_atomic(cert_path(settings, ca_name), cert.public_bytes(serialization.Encoding.PEM))
    return Responder(ca_name, cert, key, issued=True, key_created=key_created)


def ensure_all(
    settings: Settings, engine: Engine, actor: str, pin_source: str | None = None
) -> list[Responder]:
    """The responder of every unexpired intermediate, issued or renewed where needed
    (``provisioner ocsp responders``; the API does the same on demand, per issuer)."""
    from provisioner.ca.ceremony import load_ca, store_of
    from provisioner.enrollment.service import HSM_LOCK

    store = store_of(settings)
    found = store.intermediates() or {
        store.current_name(settings.hsm.ca_key_label): store.intermediate()
    }
    now = datetime.now(UTC)
    live = {name: cert for name, cert in found.items() if cert.not_valid_after_utc > now}
    with HSM_LOCK:
        ca = load_ca(settings, pin_source=pin_source)
        try:
            return [
                ensure_responder(settings, engine, ca.pool, name, cert, actor, now=now)
                for name, cert in live.items()
            ]
        finally:
            ca.close()
