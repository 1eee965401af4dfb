"""Device keys and JWTs made in software, the way a device (or its chip) makes them: ES256
signatures as raw r||s, base64url without padding. Shared by the device-auth and plane
tests."""

from __future__ import annotations

import base64
import json
from functools import cache
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from provisioner.cloud.credentials import NO_EXPIRY, Credential, PublicKeyFormat

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@cache
def rsa_key(n: int = 0) -> rsa.RSAPrivateKey:
    """RSA keys are slow to make: ``n`` picks one of a few shared ones."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def credential(key: PrivateKey, expiration_time: str = NO_EXPIRY) -> Credential:
    fmt = (
        PublicKeyFormat.ES256_PEM
        if isinstance(key, ec.EllipticCurvePrivateKey)
        else (PublicKeyFormat.RSA_PEM)
    )
    return Credential(fmt, public_pem(key), expiration_time)


def sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def make_jwt(
    key: PrivateKey,
    *,
    project: str,
    now: float,
    lifetime: int = 3600,
    alg: str | None = None,
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
) -> str:
    """A device JWT: iat = now, exp = now + lifetime, aud = project, unless overridden."""
    alg = alg or ("ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256")
    head = header if header is not None else {"alg": alg, "typ": "JWT"}
    body = (
        claims
        if claims is not None
        else {"iat": int(now), "exp": int(now) + lifetime, "aud": project}
    )
    signing_input = b64url(json.dumps(head).encode()) + "." + b64url(json.dumps(body).encode())
    return signing_input + "." + b64url(sign(key, signing_input.encode()))
