"""What a station checks before it writes a certificate to a chip: the CA chain it pins.

The certificate a station writes comes from elsewhere: the signer's answer through the
broker (line server), or the line's answer over the link (station PC). Neither channel is
the authority on what the CA signed; the CA chain the station pinned is. So before any write
the station checks, against that chain, that the certificate:

* is signed by an intermediate it trusts: the one it pinned, or one the pinned root signed
  (a rotation after enrollment; the chip's chain material must then carry the pinned root);
* certifies the public key the station just read from the chip;
* names the chip's serial (the subject's CN).

A certificate that fails is a forgery (or a line gone wrong): :class:`ForgedCertificateError`.

Where the pin comes from: on a station PC, ``ca-chain.pem`` of its identity, checked at
enrollment; on the line server (and a PC holding the CA's public files), ``<var>/ca``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from provisioner.ca.chain import ChainMaterial
from provisioner.ca.store import CaStore
from provisioner.errors import ConfigError, ForgedCertificateError
from provisioner.settings import Settings


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


@dataclass(frozen=True)
class PinnedChain:
    """The root and intermediates a station trusts, and where it got them (for messages)."""

    root: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    source: str

    @classmethod
    def of(cls, settings: Settings) -> PinnedChain:
        """This PC's pin: its station identity's chain, else the CA's public files here.
        Without either nothing may be written (ConfigError naming both)."""
        from provisioner.enrollment.identity import StationIdentityFiles

        ident = StationIdentityFiles.of(settings)
        if ident.chain_path.exists():
            chain = ident.chain()  # intermediate, root: checked at enrollment
            return cls(chain[-1], tuple(chain[:-1]), str(ident.chain_path))
        store = CaStore(settings.ca_dir)
        if store.root_pem.exists():
            inters = list(store.intermediates().values())
            if store.intermediate_pem.exists():
                inters.append(store.intermediate())
            return cls(store.root(), tuple(inters), str(settings.ca_dir))
        raise ConfigError(
            f"no pinned CA chain ({ident.chain_path} or {store.root_pem}): this station "
            "writes no certificate it cannot check; enroll it (`provisioner station enroll`)"
        )

    def trusted_intermediate(self, material: ChainMaterial) -> x509.Certificate:
        """The chain material's intermediate (what the chip stores and what must have signed
        the device certificate), once it is trusted."""
        if material.root != self.root:
            raise ForgedCertificateError(
                f"the chain material names root {material.root.subject.rfc4514_string()!r}, "
                f"not the root pinned in {self.source}"
            )
        inter = material.intermediate
        if inter in self.intermediates:
            return inter
        if _is_ca(inter) and _issued_by(inter, self.root):
            return inter  # a rotation since the pin: the pinned root vouches for it
        raise ForgedCertificateError(
            f"the intermediate {inter.subject.rfc4514_string()!r} is not signed by the root "
            f"pinned in {self.source}"
        )

    def check(
        self, der: bytes, *, public_point: bytes, serial_hex: str, material: ChainMaterial
    ) -> x509.Certificate:
        """The device certificate ``der``, once it is the pinned CA's for this chip's key
        and serial; else ForgedCertificateError (say which check failed, never the DER)."""
        inter = self.trusted_intermediate(material)
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise ForgedCertificateError(
                f"chip {serial_hex}: the certificate handed over is not DER"
            ) from None
        if not _issued_by(cert, inter):
            raise ForgedCertificateError(
                f"chip {serial_hex}: the certificate is not signed by the intermediate "
                f"{inter.subject.rfc4514_string()!r} pinned in {self.source}"
            )
        try:
            key = cert.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        except (ValueError, TypeError):  # not an EC key: not a chip's
            key = b""
        if key != public_point:
            raise ForgedCertificateError(
                f"chip {serial_hex}: the certificate is for another public key than the chip's"
            )
        cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if [str(v).upper() for v in cns] != [serial_hex.upper()]:
            named = ", ".join(map(str, cns))[:40]
            raise ForgedCertificateError(
                f"chip {serial_hex}: the certificate names another chip ({named!r})"
            )
        return cert
