"""Compressed-certificate definitions, built from a template certificate.

Microchip's compressed format keeps only what varies per device on the chip (a 72-byte
record: signature, encoded dates, signer ID, template/chain IDs, serial-number source)
plus the public key the chip computes itself; ``atcacert`` rebuilds the full DER from a
*definition*: the template certificate and the offset of every variable element in it.
Microchip's design suite derives such definitions from a template with asn1crypto; this
module does the same from the DER tree (written fresh), as immutable values that
:mod:`provisioner.chips.atcacert` hands to the library.

Two definitions make a chain on the chip (Trust&GO layout by default):

- the **device** certificate: compressed in one slot (10), public key from the key slot by
  GenKey, certificate serial number stored in a data slot (8; our serials are random, not
  derivable), subject CN = the chip serial in upper-case hex, filled from config zone
  bytes 0-3 and 8-12;
- the **signer** (intermediate CA) certificate: compressed in another slot (12), its
  public key stored padded in a third (11); its serial number stays in the template.

:func:`compressibility_problem` states what a certificate must satisfy to survive the
round trip byte for byte (dates on the hour, expiry N years later on the same instant or
the "no expiry" date 9999-12-31 23:59:59), so a profile that cannot be encoded is refused
where it is loaded, not at the chip.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum

from cryptography import x509

from provisioner.chips import der
from provisioner.errors import InvalidInputError

# atcacert enums (atcacert_def.h / atcacert_date.h).
CERTTYPE_X509 = 0
ZONE_CONFIG, ZONE_DATA, ZONE_NONE = 0x00, 0x02, 0x07
SNSRC_STORED = 0x0
DATEFMT_RFC5280_UTC, DATEFMT_RFC5280_GEN = 1, 4
TF_NONE, TF_BIN2HEX_UC = 0x00, 0x02

COMP_CERT_SIZE = 72
PADDED_PUBLIC_KEY_SIZE = 72  # 4 pad bytes + X + 4 pad bytes + Y, as a data slot holds it
NO_EXPIRY = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
MAX_EXPIRE_YEARS = 127  # compressed format versions 1 and 2 (0 means "no expiry")

_OID_CN = der.encode_oid("2.5.4.3")
_OID_SKI = der.encode_oid("2.5.29.14")
_OID_AKI = der.encode_oid("2.5.29.35")


class StdElement(IntEnum):
    """Index into ``std_cert_elements`` (atcacert_std_cert_element_t)."""

    PUBLIC_KEY = 0
    SIGNATURE = 1
    ISSUE_DATE = 2
    EXPIRE_DATE = 3
    SIGNER_ID = 4
    CERT_SN = 5
    AUTH_KEY_ID = 6
    SUBJ_KEY_ID = 7


@dataclass(frozen=True)
class DeviceLoc:
    """Where on the chip an element lives (atcacert_device_loc_t)."""

    zone: int
    slot: int = 0
    is_genkey: bool = False
    offset: int = 0
    count: int = 0


NOWHERE = DeviceLoc(ZONE_NONE)


@dataclass(frozen=True)
class CertLoc:
    """Where in the certificate an element lives (atcacert_cert_loc_t)."""

    offset: int
    count: int


ABSENT = CertLoc(0, 0)


@dataclass(frozen=True)
class CertElement:
    """An element outside the standard set: chip data copied (and transformed) into the
    certificate, e.g. the serial number in the subject CN."""

    name: str
    device: DeviceLoc
    cert: CertLoc
    transform: int = TF_NONE


@dataclass(frozen=True)
class CertDefinition:
    """One atcacert definition; :mod:`provisioner.chips.atcacert` turns it into the C struct."""

    template: bytes
    template_id: int
    chain_id: int
    comp_cert: DeviceLoc
    public_key: DeviceLoc
    cert_sn: DeviceLoc
    private_key_slot: int
    tbs: CertLoc
    std: tuple[CertLoc, ...]  # indexed by StdElement
    issue_date_format: int
    expire_date_format: int
    expire_years: int
    elements: tuple[CertElement, ...] = ()
    sn_source: int = SNSRC_STORED

    def slots(self) -> tuple[int, ...]:
        """The data slots this definition writes (the key slot is generated, not written)."""
        locs = (self.comp_cert, self.cert_sn, self.public_key)
        return tuple(
            sorted({d.slot for d in locs if d.zone == ZONE_DATA and not d.is_genkey and d.count})
        )


@dataclass(frozen=True)
class ChipCertChain:
    """What a chip needs to store and re-read its certificates: both definitions, and the
    public keys (X||Y) that sign them (their key identifiers are recomputed on reading)."""

    device: CertDefinition
    signer: CertDefinition
    signer_der: bytes
    signer_public_key: bytes
    root_public_key: bytes


@dataclass(frozen=True)
class _Parsed:
    tbs: der.Tlv
    serial: der.Tlv
    not_before: der.Tlv
    not_after: der.Tlv
    subject: der.Tlv
    public_key: CertLoc
    signature: der.Tlv
    ski: CertLoc
    aki: CertLoc


def _parse(template: bytes) -> _Parsed:
    cert = der.read_tlv(template, 0)
    if cert.tag != der.SEQUENCE or cert.end != len(template):
        raise InvalidInputError("template: not one DER certificate")
    parts = der.children(template, cert)
    if len(parts) != 3 or parts[2].tag != der.BIT_STRING:
        raise InvalidInputError("template: not an X.509 certificate")
    tbs, _, signature = parts
    fields = der.children(template, tbs)
    if fields[0].tag != der.CONTEXT_0 or len(fields) < 8:
        raise InvalidInputError("template: not an X.509 v3 certificate with extensions")
    serial, _, _, validity, subject, spki, *rest = fields[1:]
    not_before, not_after = der.children(template, validity)
    key_bits = der.children(template, spki)[1]
    if key_bits.length != 66 or der.value(template, key_bits)[:2] != b"\x00\x04":
        raise InvalidInputError("template: subject key is not an uncompressed P-256 point")
    ext_wrapper = next((f for f in rest if f.tag == der.CONTEXT_3), None)
    if ext_wrapper is None:
        raise InvalidInputError("template: no extensions")
    ski, aki = ABSENT, ABSENT
    for ext in der.children(template, der.children(template, ext_wrapper)[0]):
        oid, *_, octets = der.children(template, ext)
        inner = der.read_tlv(template, octets.value_offset)
        if der.value(template, oid) == _OID_SKI and inner.tag == der.OCTET_STRING:
            ski = CertLoc(inner.value_offset, inner.length)
        elif der.value(template, oid) == _OID_AKI and inner.tag == der.SEQUENCE:
            key_id = next((c for c in der.children(template, inner) if c.tag == der.KEY_ID_0), None)
            if key_id is not None:
                aki = CertLoc(key_id.value_offset, key_id.length)
    for loc, what in ((ski, "subjectKeyIdentifier"), (aki, "authorityKeyIdentifier")):
        if loc.count != 20:
            raise InvalidInputError(f"template: no 20-byte {what}")
    return _Parsed(
        tbs=tbs,
        serial=serial,
        not_before=not_before,
        not_after=not_after,
        subject=subject,
        public_key=CertLoc(key_bits.value_offset + 2, 64),
        signature=signature,
        ski=ski,
        aki=aki,
    )


def _date_format(tlv: der.Tlv) -> int:
    if tlv.tag == der.UTC_TIME and tlv.length == 13:
        return DATEFMT_RFC5280_UTC
    if tlv.tag == der.GENERALIZED_TIME and tlv.length == 15:
        return DATEFMT_RFC5280_GEN
    raise InvalidInputError("template: dates must be UTCTime or GeneralizedTime in Zulu form")


def _common_name(template: bytes, subject: der.Tlv) -> CertLoc:
    for rdn in der.children(template, subject):
        for atv in der.children(template, rdn):
            oid, val = der.children(template, atv)
            if der.value(template, oid) == _OID_CN:
                return CertLoc(val.value_offset, val.length)
    raise InvalidInputError("template: the subject has no common name")


def _expire_years(cert: x509.Certificate) -> int:
    after = cert.not_valid_after_utc
    return 0 if after == NO_EXPIRY else after.year - cert.not_valid_before_utc.year


def _std(p: _Parsed, *, serial: CertLoc) -> tuple[CertLoc, ...]:
    std = {
        StdElement.PUBLIC_KEY: p.public_key,
        StdElement.SIGNATURE: CertLoc(p.signature.offset, 64),
        StdElement.ISSUE_DATE: CertLoc(p.not_before.value_offset, p.not_before.length),
        StdElement.EXPIRE_DATE: CertLoc(p.not_after.value_offset, p.not_after.length),
        StdElement.SIGNER_ID: ABSENT,
        StdElement.CERT_SN: serial,
        StdElement.AUTH_KEY_ID: p.aki,
        StdElement.SUBJ_KEY_ID: p.ski,
    }
    return tuple(std[e] for e in StdElement)


def device_definition(
    template: bytes,
    *,
    key_slot: int,
    serial_slot: int,
    cert_slot: int,
    template_id: int,
    chain_id: int,
) -> CertDefinition:
    """The device certificate's definition. The template's CN must be 18 characters (the
    9-byte chip serial in hex) and its serial number a fixed length stored on the chip."""
    cert = _checked(template, "device template")
    p = _parse(template)
    cn = _common_name(template, p.subject)
    if cn.count != 18:
        raise InvalidInputError("device template: the CN must be the 18-hex-digit chip serial")
    if not 1 <= p.serial.length <= 32:
        raise InvalidInputError("device template: serial number length must be 1-32 bytes")
    return CertDefinition(
        template=template,
        template_id=template_id,
        chain_id=chain_id,
        comp_cert=DeviceLoc(ZONE_DATA, cert_slot, False, 0, COMP_CERT_SIZE),
        public_key=DeviceLoc(ZONE_DATA, key_slot, True, 0, 64),
        cert_sn=DeviceLoc(ZONE_DATA, serial_slot, False, 0, p.serial.length),
        private_key_slot=key_slot,
        tbs=CertLoc(p.tbs.offset, p.tbs.size),
        std=_std(p, serial=CertLoc(p.serial.value_offset, p.serial.length)),
        issue_date_format=_date_format(p.not_before),
        expire_date_format=_date_format(p.not_after),
        expire_years=_expire_years(cert),
        elements=(
            CertElement(
                "SN03", DeviceLoc(ZONE_CONFIG, 0, False, 0, 4), CertLoc(cn.offset, 8), TF_BIN2HEX_UC
            ),
            CertElement(
                "SN48",
                DeviceLoc(ZONE_CONFIG, 0, False, 8, 5),
                CertLoc(cn.offset + 8, 10),
                TF_BIN2HEX_UC,
            ),
        ),
    )


def signer_definition(
    signer_der: bytes, *, key_slot: int, cert_slot: int, template_id: int, chain_id: int
) -> CertDefinition:
    """The signer (intermediate CA) certificate's definition: the certificate itself is the
    template, so only its signature, dates and public key travel through the chip."""
    cert = _checked(signer_der, "signer certificate")
    p = _parse(signer_der)
    return CertDefinition(
        template=signer_der,
        template_id=template_id,
        chain_id=chain_id,
        comp_cert=DeviceLoc(ZONE_DATA, cert_slot, False, 0, COMP_CERT_SIZE),
        public_key=DeviceLoc(ZONE_DATA, key_slot, False, 0, PADDED_PUBLIC_KEY_SIZE),
        cert_sn=NOWHERE,
        private_key_slot=0,
        tbs=CertLoc(p.tbs.offset, p.tbs.size),
        std=_std(p, serial=ABSENT),
        issue_date_format=_date_format(p.not_before),
        expire_date_format=_date_format(p.not_after),
        expire_years=_expire_years(cert),
    )


def _checked(data: bytes, what: str) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
        raise InvalidInputError(f"{what}: not a DER certificate ({exc})") from None
    problem = compressibility_problem(cert.not_valid_before_utc, cert.not_valid_after_utc)
    if problem:
        raise InvalidInputError(f"{what} cannot be stored compressed: {problem}")
    return cert


def compressibility_problem(not_before: datetime, not_after: datetime) -> str | None:
    """Why these validity dates cannot survive the compressed format, or None.

    The format keeps the issue date to the hour (years 2000-2127) and the expiry as a
    whole number of years after it (1-127), or 0 for "no expiry" = 9999-12-31 23:59:59."""
    if not 2000 <= not_before.year <= 2127:
        return f"notBefore year {not_before.year} is outside 2000-2127"
    if not_before.minute or not_before.second or not_before.microsecond:
        return "notBefore must fall on the hour (the format keeps no minutes or seconds)"
    if not_after == NO_EXPIRY:
        return None
    years = not_after.year - not_before.year
    same_instant = (not_after.month, not_after.day, not_after.hour, not_after.minute) == (
        not_before.month,
        not_before.day,
        not_before.hour,
        not_before.minute,
    )
    if not same_instant or not_after.second or not_after.microsecond or years < 1:
        return "notAfter must be notBefore plus whole years, or 9999-12-31 23:59:59"
    if years > MAX_EXPIRE_YEARS:
        return f"notAfter is {years} years after notBefore (at most {MAX_EXPIRE_YEARS})"
    return None
