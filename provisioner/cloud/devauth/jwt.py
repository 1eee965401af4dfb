"""Device JWTs as Cloud IoT Core checked them: the one verifier every device entry point uses.

A device proves who it is with a short-lived JWT signed by its own key (on the chip, for an
ATECC608): the MQTT bridge (password), the HTTP bridge (``Authorization: Bearer``), gateway
attach messages and the external broker hooks all come here, so the rules cannot drift apart
between them. The rules are Cloud IoT's:

- RS256 or ES256 only (``none``, HS256 and everything else refused), and the key type must be
  the credential's (an RS256 token is never checked against an EC key, nor the reverse);
- ES256 signatures are the JWS form, raw 64-byte ``r || s`` (what the chip returns), not DER;
- ``aud`` is the project id; ``iat`` at most 10 minutes in the future (clock skew); ``exp``
  after now and at most 24 h (+ the skew) after ``iat``;
- credentials whose ``expirationTime`` has passed are skipped.

Implemented on ``cryptography`` alone: a JWT library's conveniences (leeways, algorithm
guessing from the key, DER tolerance) are exactly what must not be accepted here.

Refusals are :class:`JwtRefused` with the rule that failed and plain words; neither the token,
nor the signature, nor any key ever appears in a message, so callers may log and return them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from provisioner.cloud.credentials import NO_EXPIRY, Credential, PublicKeyFormat

ALGORITHMS = ("RS256", "ES256")
MAX_SKEW_S = 600
MAX_LIFETIME_S = 24 * 3600
# A JWT of three claims signed with a 4096-bit RSA key is under 1 KB; anything far bigger is
# not a device token and is refused before any decoding work.
MAX_TOKEN_CHARS = 8 * 1024
RULES = ("format", "alg", "aud", "iat", "exp", "lifetime", "signature", "credential")

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_ES256_SIG_BYTES = 64
_KEY_CACHE = 4096  # loaded public keys; parsing a PEM per connect would dominate the cost


class JwtRefused(Exception):
    """A token refused by one rule; ``str(exc)`` is ``"<rule>: <plain words>"``."""

    def __init__(self, rule: str, words: str) -> None:
        assert rule in RULES, rule
        super().__init__(f"{rule}: {words}")
        self.rule = rule


@dataclass(frozen=True)
class DeviceClaims:
    """What a verified token says: enough for the caller to schedule the disconnect at
    ``exp`` (Cloud IoT closes the connection when the token expires)."""

    alg: str
    iat: int
    exp: int
    aud: str


def verify_device_jwt(
    token: str, *, project: str, credentials: Sequence[Credential], now: float
) -> DeviceClaims:
    """The claims of ``token`` if it is a valid device JWT for ``project`` signed by one of
    ``credentials``; JwtRefused naming the first rule it breaks otherwise."""
    return verify_with_credential(token, project=project, credentials=credentials, now=now)[0]


def verify_with_credential(
    token: str, *, project: str, credentials: Sequence[Credential], now: float
) -> tuple[DeviceClaims, Credential]:
    """As :func:`verify_device_jwt`, also returning the credential that verified the token:
    the device plane keeps it to cut the connection when exactly that credential is removed
    or expires, while other credentials of the device change freely (key rotation)."""
    signing_input, header, claims, signature = _parse(token)
    alg = header["alg"]
    # Cheap claim checks first: a flood of stale or foreign tokens costs no signature work.
    _check_claims(claims, project=project, now=now)
    matching = [c for c in credentials if _alg_of(c.format) == alg]
    if not matching:
        if not credentials:
            raise JwtRefused("credential", "the device has no credentials")
        kinds = sorted({_alg_of(c.format) for c in credentials})
        raise JwtRefused(
            "alg",
            f"the token is signed {alg} but the device's credentials are for {', '.join(kinds)}",
        )
    usable = [c for c in matching if not credential_expired(c, now)]
    if not usable:
        raise JwtRefused("credential", f"every {alg} credential of the device has expired")
    for credential in usable:
        key = _public_key(credential.format, credential.key)
        if key is not None and _signature_ok(alg, key, signing_input, signature):
            return DeviceClaims(alg, claims["iat"], claims["exp"], claims["aud"]), credential
    raise JwtRefused(
        "signature", f"the {alg} signature does not verify with any current credential"
    )


def credential_expired(credential: Credential, now: float) -> bool:
    """Whether the credential's ``expirationTime`` has passed (the Cloud IoT "never" value,
    1970-01-01T00:00:00Z, means it never expires). An unreadable time counts as expired: the
    registry normalised it at create, so that can only be a damaged row."""
    if credential.expiration_time == NO_EXPIRY:
        return False
    try:
        when = datetime.fromisoformat(credential.expiration_time.replace("Z", "+00:00"))
    except ValueError:
        return True
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp() <= now


def public_key_of(credential: Credential) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey | None:
    """The credential's public key (parsed once, then cached); None if it is unusable."""
    return _public_key(credential.format, credential.key)


def _alg_of(fmt: PublicKeyFormat) -> str:
    return "ES256" if fmt.is_ec else "RS256"


# --- parsing ---------------------------------------------------------------------------------


def _parse(token: str) -> tuple[bytes, dict[str, Any], dict[str, Any], bytes]:
    """(signing input, header, claims, signature) of a compact JWS, or JwtRefused("format"
    / "alg"). Only what a device JWT may hold passes: three base64url parts without padding,
    JSON objects without duplicate names, integer times and a string audience."""
    if not isinstance(token, str) or not token:
        raise JwtRefused("format", "no token was given")
    if len(token) > MAX_TOKEN_CHARS:
        raise JwtRefused("format", f"the token is longer than {MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtRefused(
            "format", f"a JWT has three dot-separated parts, this token has {len(parts)}"
        )
    raw_header, raw_claims, raw_sig = parts
    header = _json_part(raw_header, "header")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise JwtRefused("format", "the header has no alg")
    if alg not in ALGORITHMS:
        shown = alg if re.fullmatch(r"[A-Za-z0-9]{1,16}", alg) else "(unreadable)"
        raise JwtRefused("alg", f"{shown} is not accepted; only RS256 and ES256 are")
    if "crit" in header:  # RFC 7515: extensions we do not understand make the token invalid
        raise JwtRefused("format", "the header lists critical extensions (crit)")
    claims = _json_part(raw_claims, "payload")
    for name in ("iat", "exp"):
        if name not in claims:
            raise JwtRefused("format", f"the {name} claim is missing")
        value = claims[name]
        if not isinstance(value, int) or isinstance(value, bool):
            raise JwtRefused("format", f"the {name} claim is not an integer number of seconds")
    if "aud" not in claims:
        raise JwtRefused("format", "the aud claim is missing")
    if not isinstance(claims["aud"], str):
        raise JwtRefused("format", "the aud claim is not a string (the project id)")
    if not raw_sig:
        raise JwtRefused("signature", "the token is not signed")
    signature = _b64(raw_sig, "signature")
    return f"{raw_header}.{raw_claims}".encode("ascii"), header, claims, signature


def _b64(part: str, what: str) -> bytes:
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise JwtRefused("format", f"the {what} is not base64url without padding")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise JwtRefused("format", f"the {what} is not base64url without padding") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            # Two verifiers could read different values from one signed token.
            raise ValueError("duplicate name")
        out[name] = value
    return out


def _json_part(part: str, what: str) -> dict[str, Any]:
    data = _b64(part, what)
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise JwtRefused("format", f"the {what} is not a JSON object") from None
    if not isinstance(value, dict):
        raise JwtRefused("format", f"the {what} is not a JSON object")
    return value


def _check_claims(claims: dict[str, Any], *, project: str, now: float) -> None:
    iat: int = claims["iat"]
    exp: int = claims["exp"]
    if claims["aud"] != project:
        raise JwtRefused("aud", "the audience (aud) is not this device's project id")
    if iat > now + MAX_SKEW_S:
        raise JwtRefused(
            "iat",
            f"the token was issued {_span(iat - now)} in the future "
            f"(at most {MAX_SKEW_S // 60} minutes of clock skew are allowed); check the "
            "device's clock",
        )
    if exp <= now:
        raise JwtRefused("exp", f"the token expired {_span(now - exp)} ago")
    if exp - iat > MAX_LIFETIME_S + MAX_SKEW_S:
        raise JwtRefused(
            "lifetime",
            f"the token is valid for {_span(exp - iat)}; at most 24 h "
            f"(+{MAX_SKEW_S // 60} min) is allowed",
        )
    if exp <= iat:
        raise JwtRefused("lifetime", "the token expires before it was issued")


def _span(seconds: float) -> str:
    s = int(seconds)
    if s >= 10**9:
        return "more than 30 years"
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


# --- keys and signatures ---------------------------------------------------------------------

_PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@lru_cache(maxsize=_KEY_CACHE)
def _public_key(fmt: PublicKeyFormat, pem: str) -> _PublicKey | None:
    """The credential's public key (cached: PEM and X.509 parsing would otherwise dominate a
    connect); None if it is not a key of its format's type (the registry validates keys at
    create, so that only happens to a damaged row)."""
    key: object
    try:
        data = pem.encode()
        if fmt.is_certificate:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm, UnicodeEncodeError):
        return None
    if fmt.is_ec:
        ok = isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
        return key if ok and isinstance(key, ec.EllipticCurvePublicKey) else None
    return key if isinstance(key, rsa.RSAPublicKey) else None


def _signature_ok(alg: str, key: _PublicKey, signing_input: bytes, signature: bytes) -> bool:
    try:
        if alg == "ES256":
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return False
            if len(signature) != _ES256_SIG_BYTES:  # DER or truncated: not a JWS signature
                return False
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
            return True
        if not isinstance(key, rsa.RSAPublicKey):
            return False
        key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        return True
    except (InvalidSignature, ValueError):
        return False
