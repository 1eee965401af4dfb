"""The certificate chain as a station stores it on chips: public material only.

A station needs no key to write certificates compressed: the root and intermediate
certificates (public files the ceremony writes to ``<var>/ca``) and the device profile
give the two compressed-certificate definitions and the public keys that rebuild them.
In production the station holds a copy of those two files.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioner.ca.issuer import device_template
from provisioner.ca.store import CaStore
from provisioner.chips.certdef import ChipCertChain, device_definition, signer_definition
from provisioner.errors import CaNotInitialisedError, InvalidInputError
from provisioner.settings import Settings


def _raw_point(cert: x509.Certificate) -> bytes:
    """X||Y of a certificate's P-256 key (the form the chip and atcacert use)."""
    return cert.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


def chip_chain(settings: Settings) -> ChipCertChain:
    """Both definitions for the configured chip profile under the current intermediate."""
    root_pem, inter_pem = settings.ca_dir / "root.pem", settings.ca_dir / "intermediate.pem"
    for path in (root_pem, inter_pem):
        if not path.exists():
            raise CaNotInitialisedError(
                f"{path} is missing: run `provisioner ca init` (or copy the CA's public "
                "root.pem and intermediate.pem to this station)"
            )
    root = x509.load_pem_x509_certificate(root_pem.read_bytes())
    inter = x509.load_pem_x509_certificate(inter_pem.read_bytes())
    layout = settings.chip.profile()
    signer_der = inter.public_bytes(serialization.Encoding.DER)
    try:
        device = device_definition(
            device_template(
                inter,
                settings.profile,
                CaStore(settings.ca_dir).current_name(settings.hsm.ca_key_label),
            ),
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
