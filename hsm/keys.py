"""Key pairs generated inside a token: sensitive, never extractable, addressed by label/id.

P-256 is the default (it is what ATECC608 chips verify and store compressed); RSA 2048 and
3072 are supported for CAs that never travel to a chip (an RSA root, say). Every private key
is made with CKA_SENSITIVE and without CKA_EXTRACTABLE, so the token itself refuses to hand
its value out.

Both halves of every pair are also made with CKA_MODIFIABLE and CKA_DESTROYABLE false: the
user PIN is enough to sign, and it must not be enough to relabel a CA key (a signer finds its
key by label) or to destroy it (the CA would be gone, and with it every CRL). Only the
security officer, by re-initialising the token, removes such a key. A token that refuses
either attribute at generation gets the pair without it, and :func:`key_protection` shows
what the token actually holds (``ca show`` prints it).
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)

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

# Neither half of a pair may be relabelled or destroyed with the user PIN.
IMMUTABLE = {Attribute.MODIFIABLE: False, Attribute.DESTROYABLE: False}

# What a token answers when it does not know or will not take an attribute in a template.
_REFUSED_TEMPLATE = (
    p11e.AttributeReadOnly,
    p11e.AttributeTypeInvalid,
    p11e.AttributeValueInvalid,
    p11e.TemplateInconsistent,
    p11e.TemplateIncomplete,
)


def generate(ts: TokenSession, ref: KeyRef, algorithm: KeyAlgorithm) -> None:
    """Generate a key pair in the token; the private half is sensitive, not extractable,
    sign-only, and stays in the token for good; both halves are neither modifiable nor
    destroyable where the token supports those attributes (else made without them: a
    token too old for them must still get its CA, and ``ca show`` says so)."""
    if ref.label is None or ref.id is None:
        raise ValueError("a new key needs both a label and an id")
    fallbacks: list[dict[Attribute, Any]] = [
        IMMUTABLE,
        {Attribute.DESTROYABLE: False},
        {Attribute.MODIFIABLE: False},
        {},
    ]
    for extra in fallbacks:
        try:
            _generate(ts, ref, algorithm, extra)
        except _REFUSED_TEMPLATE as exc:
            if not extra:
                raise
            log.warning(
                "token %r refused %s for key %r (%s): trying without",
                ts.token_label,
                ", ".join(f"CKA_{a.name}=false" for a in extra),
                ref.label,
                type(exc).__name__,
            )
            continue
        return


def _generate(
    ts: TokenSession, ref: KeyRef, algorithm: KeyAlgorithm, extra: dict[Attribute, Any]
) -> None:
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
                public_template={Attribute.VERIFY: True, Attribute.TOKEN: True, **extra},
                private_template={**_PRIVATE, **extra},
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
                **extra,
            },
            private_template={**_PRIVATE, **extra},
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


def _flag(obj: Any, attribute: Attribute) -> bool | None:
    """A boolean attribute of an object; None when the token does not know it."""
    try:
        return bool(obj[attribute])
    except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
        return None


def delete_keys(ts: TokenSession, label: str) -> tuple[int, int]:
    """Destroy every object labelled ``label`` that may be destroyed (for `ca init
    --force`); returns (destroyed, kept): a key made with CKA_DESTROYABLE false stays, as
    it must (only re-initialising the token with the SO PIN removes it)."""
    destroyed = kept = 0
    with ts.lock:
        for obj in list(ts.session.get_objects({Attribute.LABEL: label})):
            if _flag(obj, Attribute.DESTROYABLE) is False:
                kept += 1
                continue
            obj.destroy()
            destroyed += 1
    return destroyed, kept


@dataclass(frozen=True)
class KeyProtection:
    """How a key pair is protected in its token, as the token reports it (None: the
    token does not know the attribute). ``modifiable``/``destroyable`` are true when
    either half of the pair is: relabelling or destroying the public half breaks the key
    for the signer as surely as the private half."""

    label: str
    token: str
    sensitive: bool | None
    extractable: bool | None
    modifiable: bool | None
    destroyable: bool | None

    @property
    def immutable(self) -> bool:
        return self.modifiable is False and self.destroyable is False

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "token": self.token,
            "sensitive": self.sensitive,
            "extractable": self.extractable,
            "modifiable": self.modifiable,
            "destroyable": self.destroyable,
        }


def _either(*values: bool | None) -> bool | None:
    if any(v is True for v in values):
        return True
    if any(v is None for v in values):
        return None
    return False


def key_protection(ts: TokenSession, ref: KeyRef | str) -> KeyProtection:
    """The protection attributes of a key pair (for ``ca show`` and tests)."""
    ref = KeyRef(label=ref) if isinstance(ref, str) else ref
    with ts.lock:
        priv = _one(ts, ObjectClass.PRIVATE_KEY, ref)
        found = list(
            ts.session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, **ref.template()})
        )
        pubs = [(_flag(p, Attribute.MODIFIABLE), _flag(p, Attribute.DESTROYABLE)) for p in found]
        return KeyProtection(
            label=str(priv.label),
            token=ts.token_label,
            sensitive=_flag(priv, Attribute.SENSITIVE),
            extractable=_flag(priv, Attribute.EXTRACTABLE),
            modifiable=_either(_flag(priv, Attribute.MODIFIABLE), *(m for m, _ in pubs)),
            destroyable=_either(_flag(priv, Attribute.DESTROYABLE), *(d for _, d in pubs)),
        )


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
