"""Key pairs generated inside a token: sensitive, never extractable, addressed by label/id.

P-256 is the default (it is what ATECC608 chips verify and store compressed); RSA 2048 and
3072 are supported for CAs that never travel to a chip (an RSA root, say). Every private key
is made with CKA_SENSITIVE and without CKA_EXTRACTABLE, so the token itself refuses to hand
its value out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_named_curve_parameters

from hsm.module import TokenSession
from hsm.uri import Pkcs11Uri
from provisioner.errors import HsmError, HsmKeyNotFoundError

P256_OID = "1.2.840.10045.3.1.7"
RSA_EXPONENT = 65537


class KeyAlgorithm(StrEnum):
    EC_P256 = "ec-p256"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"

    @property
    def rsa_bits(self) -> int | None:
        return {"rsa-2048": 2048, "rsa-3072": 3072}.get(self.value)


@dataclass(frozen=True)
class KeyRef:
    """Which key pair: by label, by CKA_ID, or both (both must then match)."""

    label: str | None = None
    id: bytes | None = None

    def __post_init__(self) -> None:
        if self.label is None and self.id is None:
            raise ValueError("a key reference needs a label or an id")

    @classmethod
    def from_uri(cls, uri: Pkcs11Uri) -> KeyRef:
        return cls(label=uri.object, id=uri.id)

    def template(self) -> dict[Attribute, Any]:
        t: dict[Attribute, Any] = {}
        if self.label is not None:
            t[Attribute.LABEL] = self.label
        if self.id is not None:
            t[Attribute.ID] = self.id
        return t

    def __str__(self) -> str:
        parts = []
        if self.label is not None:
            parts.append(f"label {self.label!r}")
        if self.id is not None:
            parts.append(f"id {self.id.hex()}")
        return " and ".join(parts)


_PRIVATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}


def generate(ts: TokenSession, ref: KeyRef, algorithm: KeyAlgorithm) -> None:
    """Generate a key pair in the token; the private half is sensitive, not extractable,
    sign-only, and stays in the token for good."""
    if ref.label is None or ref.id is None:
        raise ValueError("a new key needs both a label and an id")
    with ts.lock:
        if algorithm is KeyAlgorithm.EC_P256:
            params = ts.session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(P256_OID)},
                local=True,
            )
            params.generate_keypair(
                mechanism=Mechanism.EC_KEY_PAIR_GEN,
                store=True,
                label=ref.label,
                id=ref.id,
                public_template={Attribute.VERIFY: True, Attribute.TOKEN: True},
                private_template=_PRIVATE,
            )
            return
        bits = algorithm.rsa_bits
        assert bits is not None
        ts.session.generate_keypair(
            KeyType.RSA,
            bits,
            store=True,
            label=ref.label,
            id=ref.id,
            mechanism=Mechanism.RSA_PKCS_KEY_PAIR_GEN,
            public_template={
                Attribute.VERIFY: True,
                Attribute.TOKEN: True,
                Attribute.ENCRYPT: False,
                Attribute.WRAP: False,
                Attribute.PUBLIC_EXPONENT: RSA_EXPONENT.to_bytes(3, "big"),
            },
            private_template=_PRIVATE,
        )


def generate_ec_p256(ts: TokenSession, label: str, key_id: bytes) -> None:
    generate(ts, KeyRef(label, key_id), KeyAlgorithm.EC_P256)


def _one(ts: TokenSession, cls: ObjectClass, ref: KeyRef) -> Any:
    found = list(ts.session.get_objects({Attribute.CLASS: cls, **ref.template()}))
    if not found:
        kind = "private" if cls == ObjectClass.PRIVATE_KEY else "public"
        raise HsmKeyNotFoundError(
            f"no {kind} key with {ref} in token {ts.token_label!r}: run `provisioner ca init`"
        )
    if len(found) > 1:
        raise HsmError(f"several keys with {ref} in token {ts.token_label!r}")
    return found[0]


def find_private_key(ts: TokenSession, ref: KeyRef | str) -> Any:
    """The private key object (a handle, valid in this session only)."""
    ref = KeyRef(label=ref) if isinstance(ref, str) else ref
    with ts.lock:
        return _one(ts, ObjectClass.PRIVATE_KEY, ref)


def public_key(ts: TokenSession, ref: KeyRef | str) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """The public half of the pair, as a cryptography key."""
    ref = KeyRef(label=ref) if isinstance(ref, str) else ref
    with ts.lock:
        pub = _one(ts, ObjectClass.PUBLIC_KEY, ref)
        if pub.key_type == KeyType.RSA:
            n = int.from_bytes(bytes(pub[Attribute.MODULUS]), "big")
            e = int.from_bytes(bytes(pub[Attribute.PUBLIC_EXPONENT]), "big")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if pub.key_type != KeyType.EC:
            raise HsmError(f"key with {ref} is neither EC nor RSA")
        if bytes(pub[Attribute.EC_PARAMS]) != encode_named_curve_parameters(P256_OID):
            raise HsmError(f"EC key with {ref} is not on P-256")
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


def key_labels(ts: TokenSession) -> list[str]:
    """Labels of the private keys in the token (for `ca show`)."""
    with ts.lock:
        try:
            objs = list(ts.session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
            return sorted(str(o.label) for o in objs)
        except p11e.PKCS11Error as exc:
            raise HsmError(f"cannot list keys of {ts.token_label!r}: {exc!r}") from None


def key_attributes(ts: TokenSession, ref: KeyRef | str) -> dict[str, bool]:
    """The security-relevant attributes of the private key (for checks and tests)."""
    key = find_private_key(ts, ref)
    with ts.lock:
        return {
            "sensitive": bool(key[Attribute.SENSITIVE]),
            "extractable": bool(key[Attribute.EXTRACTABLE]),
            "always_sensitive": bool(key[Attribute.ALWAYS_SENSITIVE]),
            "never_extractable": bool(key[Attribute.NEVER_EXTRACTABLE]),
            "token": bool(key[Attribute.TOKEN]),
        }
