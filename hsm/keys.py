"""Key pairs generated inside a token: sensitive, never extractable, addressed by label."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_named_curve_parameters

from hsm.module import TokenSession
from provisioner.errors import HsmError, HsmKeyNotFoundError

P256_OID = "1.2.840.10045.3.1.7"


def generate_ec_p256(ts: TokenSession, label: str, key_id: bytes) -> None:
    """Generate a P-256 key pair in the token; the private half is sensitive, not
    extractable, sign-only, and stays in the token for good."""
    with ts.lock:
        params = ts.session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters(P256_OID)},
            local=True,
        )
        params.generate_keypair(
            mechanism=Mechanism.EC_KEY_PAIR_GEN,
            store=True,
            label=label,
            id=key_id,
            public_template={Attribute.VERIFY: True, Attribute.TOKEN: True},
            private_template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.DECRYPT: False,
                Attribute.UNWRAP: False,
                Attribute.DERIVE: False,
            },
        )


def find_private_key(ts: TokenSession, label: str) -> Any:
    with ts.lock:
        try:
            return ts.session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        except p11e.NoSuchKey:
            raise HsmKeyNotFoundError(
                f"no private key labelled {label!r} in token {ts.token_label!r}: "
                "run `provisioner ca init`"
            ) from None
        except p11e.MultipleObjectsReturned:
            raise HsmError(f"several keys labelled {label!r} in {ts.token_label!r}") from None


def public_key(ts: TokenSession, label: str) -> ec.EllipticCurvePublicKey:
    """The public half of the pair labelled ``label``, as a cryptography key."""
    with ts.lock:
        try:
            pub = ts.session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=label)
        except p11e.NoSuchKey:
            raise HsmKeyNotFoundError(
                f"no public key labelled {label!r} in token {ts.token_label!r}"
            ) from None
        point = bytes(pub[Attribute.EC_POINT])
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unwrap_ec_point(point))


def unwrap_ec_point(data: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING on SoftHSM and raw on some modules: accept both."""
    if len(data) == 67 and data[0] == 0x04 and data[1] == 0x41:
        return data[2:]
    if len(data) == 65 and data[0] == 0x04:
        return data
    raise HsmError(f"unexpected CKA_EC_POINT encoding ({len(data)} bytes)")


def delete_keys(ts: TokenSession, label: str) -> int:
    """Destroy every object labelled ``label`` (for `ca init --force`); returns how many."""
    n = 0
    with ts.lock:
        for obj in list(ts.session.get_objects({Attribute.LABEL: label})):
            obj.destroy()
            n += 1
    return n


def key_attributes(ts: TokenSession, label: str) -> dict[str, bool]:
    """The security-relevant attributes of the private key (for checks and tests)."""
    key = find_private_key(ts, label)
    with ts.lock:
        return {
            "sensitive": bool(key[Attribute.SENSITIVE]),
            "extractable": bool(key[Attribute.EXTRACTABLE]),
            "always_sensitive": bool(key[Attribute.ALWAYS_SENSITIVE]),
            "never_extractable": bool(key[Attribute.NEVER_EXTRACTABLE]),
            "token": bool(key[Attribute.TOKEN]),
        }
