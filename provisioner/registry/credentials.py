"""Device credentials in the Cloud IoT v1 shape, parsed and validated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

# google.cloud.iot.v1.PublicKeyFormat (proto3 JSON may send names or numbers).
FORMATS = {"RSA_X509_PEM": 1, "ES256_PEM": 2, "RSA_PEM": 3, "ES256_X509_PEM": 4}
_BY_NUMBER = {v: k for k, v in FORMATS.items()}
NO_EXPIRY = "1970-01-01T00:00:00Z"
MAX_CREDENTIALS = 3


class InvalidCredential(ValueError):
    """The message is what Cloud IoT users see as INVALID_ARGUMENT."""


@dataclass(frozen=True)
class Credential:
    format: str
    key: str
    expiration_time: str = NO_EXPIRY

    def as_json(self, int_enums: bool = False) -> dict[str, Any]:
        fmt: str | int = FORMATS[self.format] if int_enums else self.format
        return {
            "publicKey": {"format": fmt, "key": self.key},
            "expirationTime": self.expiration_time,
        }


def _format_name(raw: Any, pos: int) -> str:
    if isinstance(raw, int) and raw in _BY_NUMBER:
        return _BY_NUMBER[raw]
    if isinstance(raw, str) and raw in FORMATS:
        return raw
    raise InvalidCredential(f"The device credential in position {pos} has an invalid format.")


def _check_key(fmt: str, pem: str, pos: int) -> None:
    data = pem.encode()
    try:
        if fmt.endswith("X509_PEM"):
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError:
        raise InvalidCredential(
            f"The device credential in position {pos} is not a valid {fmt} value."
        ) from None
    if fmt.startswith("ES256"):
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise InvalidCredential(
                f"The device credential in position {pos} must be an EC P-256 key for {fmt}."
            )
    elif not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise InvalidCredential(
            f"The device credential in position {pos} must be an RSA key of at least 2048 bits."
        )


def parse_credentials(raw: Any) -> list[Credential]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidCredential("credentials must be a list")
    if len(raw) > MAX_CREDENTIALS:
        raise InvalidCredential(
            f"A device can have at most {MAX_CREDENTIALS} credentials; {len(raw)} were given."
        )
    out = []
    for pos, item in enumerate(raw):
        pk = item.get("publicKey") if isinstance(item, dict) else None
        if not isinstance(pk, dict) or not isinstance(pk.get("key"), str):
            raise InvalidCredential(f"The device credential in position {pos} has no publicKey.")
        fmt = _format_name(pk.get("format"), pos)
        _check_key(fmt, pk["key"], pos)
        out.append(Credential(fmt, pk["key"], str(item.get("expirationTime") or NO_EXPIRY)))
    return out
