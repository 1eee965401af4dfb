"""Cloud IoT device JWTs signed by the chip.

A device proves who it is by signing a short-lived JWT (claims ``iat``, ``exp``, ``aud`` =
the project id) with its private key; the registry checks it against the device's
credentials. On an ATECC608 the key never leaves the chip, so the JWT is built here and
only its SHA-256 digest goes to the chip: Sign answers R||S as two 32-byte big-endian
integers, which is exactly the JWS ES256 signature (RFC 7518 section 3.4), so it is
base64url-encoded as it comes (no DER, and no key in Python at any point).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Protocol

from provisioner.errors import InvalidInputError

HEADER = {"alg": "ES256", "typ": "JWT"}
MAX_LIFETIME_S = 24 * 3600  # Cloud IoT refuses longer tokens


class ChipSigner(Protocol):
    """What minting needs of a chip: a digest signed in a given slot (raw R||S)."""

    def sign_digest(self, digest: bytes, slot: int | None = None) -> bytes: ...


@dataclass(frozen=True)
class DeviceJwt:
    """A minted token and its claims. ``token`` is a secret for its lifetime: it is never
    printed, logged or put in an exception (``repr`` leaves it out)."""

    token: str
    iat: int
    exp: int
    audience: str
    slot: int

    def __repr__(self) -> str:
        return (
            f"DeviceJwt(iat={self.iat}, exp={self.exp}, audience={self.audience!r}, "
            f"slot={self.slot})"
        )

    @property
    def lifetime_s(self) -> int:
        return self.exp - self.iat


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWS compact serialisation wants."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signing_input(project: str, iat: int, exp: int) -> bytes:
    """``base64url(header) . base64url(claims)``: the bytes whose SHA-256 the chip signs."""
    header = json.dumps(HEADER, separators=(",", ":")).encode()
    claims = json.dumps({"iat": iat, "exp": exp, "aud": project}, separators=(",", ":"))
    return f"{b64url(header)}.{b64url(claims.encode())}".encode("ascii")


def mint_jwt(
    chip: ChipSigner,
    project: str,
    *,
    slot: int,
    lifetime_s: int,
    now: float | None = None,
) -> DeviceJwt:
    """A Cloud IoT device JWT for ``project`` valid ``lifetime_s`` seconds from ``now``,
    signed by the chip with the key in ``slot``."""
    if not project:
        raise InvalidInputError("the JWT audience (the registry's project id) is empty")
    if not 0 < lifetime_s <= MAX_LIFETIME_S:
        raise InvalidInputError(
            f"a device JWT lives 1 s to 24 h (Cloud IoT's limit), not {lifetime_s} s"
        )
    iat = int(time.time() if now is None else now)
    exp = iat + lifetime_s
    data = signing_input(project, iat, exp)
    signature = chip.sign_digest(hashlib.sha256(data).digest(), slot)
    if len(signature) != 64:
        raise InvalidInputError(f"the chip answered a {len(signature)}-byte signature, not 64")
    token = f"{data.decode('ascii')}.{b64url(signature)}"
    return DeviceJwt(token=token, iat=iat, exp=exp, audience=project, slot=slot)
