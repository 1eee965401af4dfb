"""Device TBSCertificates patched into a template: the signer's fast path.

Every device certificate of one CA and profile has the same layout (the compressed format
on the chip depends on it: :func:`provisioner.ca.issuer.device_template`): only the serial
number (always 16 bytes: :func:`provisioner.ca.issuer.random_serial_number`), the two
dates, the CN (the 18-character chip serial), the P-256 point and the subject key
identifier (SHA-1 of that point) differ, each with a fixed length. So the TBS that
``x509.CertificateBuilder`` produces once, for placeholder values, is kept with the
offsets of those fields, and each further device's TBS is that template with the fields
overwritten — a few slice assignments instead of the builder's work.

The dates change once an hour (notBefore is on the hour), so :meth:`DeviceTbsTemplate.dated`
writes them in once and keeps the TBS cut at the four fields that still differ per device;
a device's TBS is then one ``bytes.join`` of nine pieces (:meth:`DatedTbs.fill`). The
signer's fixed work per certificate is what limits it when the token signs fast (issue 19,
docs/performance.md), and this is the cheapest exact way to make those bytes.

Nothing here trusts the template blindly: it is made by the builder itself, every field is
located as exactly one occurrence of a value unique to it, and a test checks that patched
and built TBS bytes are identical for the same inputs. Anything that does not fit (an RSA
subject, a date encoded with another length, a CN of another length) returns ``None`` and
the caller takes the builder path.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

CN_LENGTH = 18  # an ATECC608 serial in upper-case hex
POINT_LENGTH = 65  # uncompressed P-256
SKI_LENGTH = 20  # SHA-1 of the point (RFC 5280 4.2.1.2, method 1)


def encode_time(t: datetime) -> bytes:
    """RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, with tag and
    length (what cryptography writes; the equivalence test holds us to it)."""
    t = t.astimezone(UTC)
    rest = f"{t.month:02d}{t.day:02d}{t.hour:02d}{t.minute:02d}{t.second:02d}Z"
    if 1950 <= t.year < 2050:
        return b"\x17\x0d" + f"{t.year % 100:02d}{rest}".encode()
    return b"\x18\x0f" + f"{t.year:04d}{rest}".encode()


def encode_validity(validity: tuple[datetime, datetime]) -> tuple[bytes, bytes]:
    return encode_time(validity[0]), encode_time(validity[1])


def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _element_end(der: bytes, start: int) -> int:
    """The offset just past the DER element that starts at ``start``."""
    first = der[start + 1]
    if first < 0x80:
        return start + 2 + first
    n = first & 0x7F
    length = int.from_bytes(der[start + 2 : start + 2 + n], "big")
    return start + 2 + n + length


def _only(haystack: bytes, needle: bytes) -> int:
    """Where ``needle`` occurs in ``haystack``; LookupError unless exactly once."""
    at = haystack.find(needle)
    if at < 0 or haystack.find(needle, at + 1) >= 0:
        raise LookupError("field not found exactly once")
    return at


def _der_integer_length(n: int) -> int:
    """Content octets of a positive DER INTEGER (a leading 0x00 when the top bit is set)."""
    return n.bit_length() // 8 + 1


@dataclass(frozen=True)
class DeviceTbsTemplate:
    """One CA's and profile's device TBS, with where each per-device field sits."""

    issuer: x509.Certificate
    tbs: bytes
    signature_algorithm: bytes  # the DER AlgorithmIdentifier after the TBS
    serial_at: int
    serial_length: int  # content octets of the serial number's INTEGER
    not_before: bytes  # encoded (tag, length, value) as in the template
    not_before_at: int
    not_after: bytes
    not_after_at: int
    cn_at: int
    point_at: int
    ski_at: int
    # The intermediate's public key, taken once: the self-check of every signature uses it.
    issuer_key: ec.EllipticCurvePublicKey

    @classmethod
    def make(
        cls,
        builder_for: BuilderFor,
        issuer: x509.Certificate,
        validity: tuple[datetime, datetime],
        serial: int,
    ) -> DeviceTbsTemplate | None:
        """A template from ``builder_for(cn, public_key, serial, validity)`` with ``serial``
        as its placeholder (a fresh random one, so it occurs nowhere else), or ``None`` if
        some field cannot be located unambiguously."""
        key = ec.generate_private_key(ec.SECP256R1())
        point = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        cn = "0123" + os.urandom(6).hex().upper() + "EE"
        cert = builder_for(cn, key.public_key(), serial, validity).sign(key, hashes.SHA256())
        tbs = cert.tbs_certificate_bytes
        der = cert.public_bytes(serialization.Encoding.DER)
        nb, na = encode_validity(validity)
        ski = hashlib.sha1(point).digest()
        held = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        if held.digest != ski:
            return None
        serial_bytes = serial.to_bytes(_der_integer_length(serial), "big")
        issuer_key = issuer.public_key()
        if not isinstance(issuer_key, ec.EllipticCurvePublicKey):
            return None
        try:
            tbs_end = _only(der, tbs) + len(tbs)
            made = cls(
                issuer=issuer,
                tbs=tbs,
                signature_algorithm=der[tbs_end : _element_end(der, tbs_end)],
                serial_at=_only(tbs, serial_bytes),
                serial_length=len(serial_bytes),
                not_before=nb,
                not_before_at=_only(tbs, nb),
                not_after=na,
                not_after_at=_only(tbs, na),
                cn_at=_only(tbs, cn.encode()),
                point_at=_only(tbs, point),
                ski_at=_only(tbs, ski),
                issuer_key=issuer_key,
            )
        except LookupError:
            return None
        # X.509 fixes the order (serial, validity, subject, key, extensions) and the
        # fields must not overlap; :meth:`dated` relies on both.
        spans = [
            (made.serial_at, made.serial_length),
            (made.not_before_at, len(nb)),
            (made.not_after_at, len(na)),
            (made.cn_at, CN_LENGTH),
            (made.point_at, POINT_LENGTH),
            (made.ski_at, SKI_LENGTH),
        ]
        if any(a + n > b for (a, n), (b, _) in pairwise(spans)):
            return None
        return made

    def fits_dates(self, dates: tuple[bytes, bytes]) -> bool:
        """Whether these encoded dates (:func:`encode_validity`) have the template's
        lengths (UTCTime becomes GeneralizedTime in 2050)."""
        return len(dates[0]) == len(self.not_before) and len(dates[1]) == len(self.not_after)

    def dated(self, dates: tuple[bytes, bytes]) -> DatedTbs | None:
        """The template with these dates written in, cut where the per-device fields sit;
        ``None`` if the dates have other lengths than the template's."""
        if not self.fits_dates(dates):
            return None
        nb, na = dates
        out = bytearray(self.tbs)
        out[self.not_before_at : self.not_before_at + len(nb)] = nb
        out[self.not_after_at : self.not_after_at + len(na)] = na
        tbs = bytes(out)
        n = self.serial_length
        return DatedTbs(
            template=self,
            dates=dates,
            head=tbs[: self.serial_at],
            after_serial=tbs[self.serial_at + n : self.cn_at],
            after_cn=tbs[self.cn_at + CN_LENGTH : self.point_at],
            after_point=tbs[self.point_at + POINT_LENGTH : self.ski_at],
            tail=tbs[self.ski_at + SKI_LENGTH :],
            serial_length=n,
        )

    def fill(self, cn: str, point: bytes, serial: int, dates: tuple[bytes, bytes]) -> bytes | None:
        """This device's TBS, or ``None`` if a field would change length."""
        dated = self.dated(dates)
        return None if dated is None else dated.fill(cn, point, serial)

    def certificate(self, tbs: bytes, signature: bytes) -> bytes:
        """Certificate ::= SEQUENCE { tbs, signatureAlgorithm, signature BIT STRING }."""
        bits = b"\x03" + der_length(len(signature) + 1) + b"\x00" + signature
        body = tbs + self.signature_algorithm + bits
        return b"\x30" + der_length(len(body)) + body


@dataclass(frozen=True, slots=True)
class DatedTbs:
    """A template with one hour's dates in it: the TBS in the five pieces around the
    serial number, the CN, the point and the subject key identifier."""

    template: DeviceTbsTemplate
    dates: tuple[bytes, bytes]
    head: bytes
    after_serial: bytes
    after_cn: bytes
    after_point: bytes
    tail: bytes
    serial_length: int

    def fill(self, cn: str, point: bytes, serial: int) -> bytes | None:
        """This device's TBS, or ``None`` if a field would change length (the caller then
        takes the builder)."""
        n = self.serial_length
        if (
            len(cn) != CN_LENGTH
            or not cn.isascii()
            or len(point) != POINT_LENGTH
            or serial <= 0
            or _der_integer_length(serial) != n
        ):
            return None
        return b"".join(
            (
                self.head,
                serial.to_bytes(n, "big"),
                self.after_serial,
                cn.encode("ascii"),
                self.after_cn,
                point,
                self.after_point,
                hashlib.sha1(point).digest(),
                self.tail,
            )
        )


class BuilderFor(Protocol):
    """What :meth:`DeviceTbsTemplate.make` needs: the one builder of device certificates."""

    def __call__(
        self,
        cn: str,
        public_key: ec.EllipticCurvePublicKey,
        serial: int,
        validity: tuple[datetime, datetime],
    ) -> x509.CertificateBuilder: ...
