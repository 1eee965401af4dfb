"""Device credentials as Cloud IoT v1 defines them, validated before anything is stored.

A registry that accepted any string as a "certificate" would turn every later login check
into a parse error, so keys are parsed and held to the Cloud IoT key rules here, once, at
creation: ES256 means P-256 only, RSA means at least 2048 bits, ``*_X509_PEM`` must be exactly
one X.509 certificate and ``*_PEM`` a SubjectPublicKeyInfo (``BEGIN PUBLIC KEY``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

MAX_CREDENTIALS = 3
MIN_RSA_BITS = 2048
MAX_KEY_CHARS = 64 * 1024  # far above any real certificate; bounds the parser's work
NO_EXPIRY = "1970-01-01T00:00:00Z"  # how Cloud IoT shows "never expires"


class PublicKeyFormat(IntEnum):
    """``google.cloud.iot.v1.PublicKeyFormat``: names and numbers as in the proto.

    Proto3 JSON clients send either (the official REST client sends numbers), so both are
    accepted; 0 (UNSPECIFIED_PUBLIC_KEY_FORMAT) is invalid and deliberately absent.
    """

    RSA_X509_PEM = 1
    ES256_PEM = 2
    RSA_PEM = 3
    ES256_X509_PEM = 4

    @property
    def is_certificate(self) -> bool:
        return self.name.endswith("_X509_PEM")

    @property
    def is_ec(self) -> bool:
        return self.name.startswith("ES256")


class InvalidCredential(ValueError):
    """A credential the registry refuses; the message is shown to the API caller as-is."""


@dataclass(frozen=True)
class Credential:
    """One validated device credential; ``key`` is kept exactly as the caller sent it, so a
    client comparing what it uploaded with what it reads back sees the same text."""

    format: PublicKeyFormat
    key: str
    expiration_time: str = NO_EXPIRY


def parse_format(raw: object, pos: int) -> PublicKeyFormat:
    """A format given as an enum name or a proto3 enum number."""
    if isinstance(raw, str) and raw in PublicKeyFormat.__members__:
        return PublicKeyFormat[raw]
    if isinstance(raw, int) and not isinstance(raw, bool):
        try:
            return PublicKeyFormat(raw)
        except ValueError:
            pass
    raise InvalidCredential(
        f"The device credential in position {pos} has an invalid public key format {raw!r}; "
        f"expected one of {', '.join(PublicKeyFormat.__members__)}."
    )


def _load_key(fmt: PublicKeyFormat, pem: str, pos: int) -> PublicKeyTypes:
    where = f"The device credential in position {pos}"
    if len(pem) > MAX_KEY_CHARS:
        raise InvalidCredential(f"{where} is too large.")
    try:
        data = pem.encode()
    except UnicodeEncodeError:  # a lone surrogate: no PEM text holds one
        raise InvalidCredential(f"{where} is not valid text.") from None
    if fmt.is_certificate:
        try:
            certs = x509.load_pem_x509_certificates(data)
        except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
            raise InvalidCredential(f"{where} is not a valid PEM X.509 certificate.") from None
        if len(certs) != 1:
            raise InvalidCredential(f"{where} must hold exactly one X.509 certificate.")
        try:  # the key is only decoded here: a damaged or unknown one must be refused too
            return certs[0].public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise InvalidCredential(f"{where} holds no usable public key.") from None
    if not pem.lstrip().startswith("-----BEGIN PUBLIC KEY-----"):
        raise InvalidCredential(
            f"{where} must be a PEM public key (-----BEGIN PUBLIC KEY-----) for {fmt.name}."
        )
    try:
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidCredential(f"{where} is not a valid PEM public key.") from None


def check_key(fmt: PublicKeyFormat, pem: str, pos: int) -> None:
    """Raise InvalidCredential unless ``pem`` parses as ``fmt`` with an acceptable key."""
    key = _load_key(fmt, pem, pos)
    where = f"The device credential in position {pos}"
    if fmt.is_ec:
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise InvalidCredential(f"{where} must hold an EC P-256 key for {fmt.name}.")
    elif not isinstance(key, rsa.RSAPublicKey):
        raise InvalidCredential(f"{where} must hold an RSA key for {fmt.name}.")
    elif key.key_size < MIN_RSA_BITS:
        raise InvalidCredential(
            f"{where} holds a {key.key_size}-bit RSA key; at least {MIN_RSA_BITS} bits are "
            "required."
        )


_FRACTION = re.compile(r"(\.\d{6})\d+")


def normalize_timestamp(raw: object, pos: int) -> str:
    """An RFC 3339 timestamp (proto3 JSON ``Timestamp``) in the UTC ``Z`` form Cloud IoT
    returns; absent or empty means no expiry."""
    if raw is None or raw == "":
        return NO_EXPIRY
    if not isinstance(raw, str):
        raise InvalidCredential(f"The device credential in position {pos} has an invalid time.")
    try:
        # Python keeps microseconds; proto3 allows nanoseconds, which are dropped.
        when = datetime.fromisoformat(_FRACTION.sub(r"\1", raw.strip()))
    except ValueError:
        raise InvalidCredential(
            f"The device credential in position {pos} has an invalid expirationTime {raw!r}; "
            "expected RFC 3339, e.g. 2030-01-01T00:00:00Z."
        ) from None
    if when.tzinfo is None:
        raise InvalidCredential(
            f"The device credential in position {pos}: expirationTime needs a time zone (Z)."
        )
    try:
        when = when.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is past year 9999 in UTC
        raise InvalidCredential(
            f"The device credential in position {pos} has an expirationTime out of range."
        ) from None
    # Not strftime("%Y"): it does not pad years before 1000 to four digits, as RFC 3339 must.
    text = f"{when.year:04d}-{when:%m-%dT%H:%M:%S}"
    if when.microsecond:  # 3 or 6 digits, as proto3 JSON writes them
        us = when.microsecond
        text += f".{us // 1000:03d}" if us % 1000 == 0 else f".{us:06d}"
    return text + "Z"


def make_credential(fmt_raw: object, key: str, expiration_raw: object, pos: int) -> Credential:
    """One credential from its wire values, validated."""
    fmt = parse_format(fmt_raw, pos)
    check_key(fmt, key, pos)
    return Credential(fmt, key, normalize_timestamp(expiration_raw, pos))
