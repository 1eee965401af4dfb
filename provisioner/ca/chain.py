"""The certificate chain as a station stores it on chips: public material only.

A station needs no key to write certificates compressed: the root and intermediate
certificates (public files the ceremony writes to ``<var>/ca``) and the device profile
give the two compressed-certificate definitions and the public keys that rebuild them.
In production the station holds a copy of those two files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioner.ca.issuer import device_template
from provisioner.ca.store import CaStore
from provisioner.chips.certdef import ChipCertChain, device_definition, signer_definition
from provisioner.errors import CaNotInitialisedError, InvalidInputError
from provisioner.settings import ProfileSettings, Settings


def _raw_point(cert: x509.Certificate) -> bytes:
    """X||Y of a certificate's P-256 key (the form the chip and atcacert use)."""
    return cert.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


@dataclass(frozen=True)
class ChainMaterial:
    """What a chip's compressed certificates are defined from: the root and current
    intermediate, the intermediate's name and the device certificate profile. The line
    server has it in its files and settings; a station PC receives it from the line
    (:mod:`provisioner.link`), so the two can never disagree."""

    root: x509.Certificate
    intermediate: x509.Certificate
    ca_name: str
    profile: ProfileSettings

    def as_json(self) -> dict[str, Any]:
        pem = serialization.Encoding.PEM
        return {
            "root": self.root.public_bytes(pem).decode(),
            "intermediate": self.intermediate.public_bytes(pem).decode(),
            "ca_name": self.ca_name,
            "profile": self.profile.model_dump(mode="json"),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChainMaterial:
        return cls(
            root=x509.load_pem_x509_certificate(str(data["root"]).encode()),
            intermediate=x509.load_pem_x509_certificate(str(data["intermediate"]).encode()),
            ca_name=str(data["ca_name"]),
            profile=ProfileSettings.model_validate(data["profile"]),
        )


def local_material(settings: Settings) -> ChainMaterial:
    """The chain material in this PC's CA files and settings (the line server's)."""
    root_pem, inter_pem = settings.ca_dir / "root.pem", settings.ca_dir / "intermediate.pem"
    for path in (root_pem, inter_pem):
        if not path.exists():
            raise CaNotInitialisedError(
                f"{path} is missing: run `provisioner ca init` (or copy the CA's public "
                "root.pem and intermediate.pem to this station)"
            )
    return ChainMaterial(
        root=x509.load_pem_x509_certificate(root_pem.read_bytes()),
        intermediate=x509.load_pem_x509_certificate(inter_pem.read_bytes()),
        ca_name=CaStore(settings.ca_dir).current_name(settings.hsm.ca_key_label),
        profile=settings.profile,
    )


def chip_chain(settings: Settings, material: ChainMaterial | None = None) -> ChipCertChain:
    """Both definitions for the configured chip layout under the current intermediate
    (``material``: as the line sent it; default: this PC's own CA files)."""
    m = material or local_material(settings)
    root, inter = m.root, m.intermediate
    layout = settings.chip.profile()
    signer_der = inter.public_bytes(serialization.Encoding.DER)
    try:
        device = device_definition(
            device_template(inter, m.profile, m.ca_name),
            key_slot=layout.key_slot,
            serial_slot=layout.serial_slot,
            cert_slot=layout.device_cert_slot,
            template_id=layout.device_template_id,
            chain_id=layout.chain_id,
        )
        signer = signer_definition(
            signer_der,
            key_slot=layout.signer_key_slot,
            cert_slot=layout.signer_cert_slot,
            template_id=layout.signer_template_id,
            chain_id=layout.chain_id,
        )
    except InvalidInputError as exc:
        raise CaNotInitialisedError(
            f"{exc}; re-run `provisioner ca init --force` to make a CA chips can store"
        ) from None
    return ChipCertChain(
        device=device,
        signer=signer,
        signer_der=signer_der,
        signer_public_key=_raw_point(inter),
        root_public_key=_raw_point(root),
    )
