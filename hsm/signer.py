"""cryptography private keys whose signatures are made inside the token.

cryptography has no public external-signer API; its certificate, CSR and CRL builders accept
any ``EllipticCurvePrivateKey`` / ``RSAPrivateKey`` whose ``sign`` returns the signature.
The EC key hashes in Python and has the token compute raw ECDSA (CKM_ECDSA, which SoftHSM
supports; python-pkcs11's default ECDSA_SHA512 it rejects), then DER-encodes r||s. The RSA
key uses CKM_SHA256_RSA_PKCS (and the SHA-384/512 variants): PKCS#1 v1.5, what X.509 CAs
use. Everything that would reveal a key raises. ``tests/hsm`` fails if a cryptography
upgrade stops accepting them.

A key signs through a *provider*: a single :class:`~hsm.module.TokenSession` (the ceremony)
or a :class:`~hsm.pool.TokenPool` (the signer: sessions leased, breaker-guarded). Key handles
are looked up per session and cached there, so a reconnect never reuses a dead handle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, Protocol, TypeVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from pkcs11 import Mechanism
from pkcs11 import exceptions as p11e

from hsm.keys import KeyRef, find_private_key, public_key
from hsm.module import TOKEN_LOST, TokenSession
from provisioner.errors import HsmError

T = TypeVar("T")


class SessionProvider(Protocol):
    token_label: str

    def run(self, fn: Callable[[TokenSession], T]) -> T: ...


def token_key(provider: SessionProvider, ref: KeyRef | str) -> HsmEcPrivateKey | HsmRsaPrivateKey:
    """The token key ``ref`` as a cryptography private key of the right type."""
    ref = KeyRef(label=ref) if isinstance(ref, str) else ref
    pub = provider.run(lambda ts: public_key(ts, ref))
    if isinstance(pub, rsa.RSAPublicKey):
        return HsmRsaPrivateKey(provider, ref, pub)
    return HsmEcPrivateKey(provider, ref, pub)


class _TokenKey:
    """What both key kinds share: handle lookup per session, signing, refusing export."""

    _provider: SessionProvider
    _ref: KeyRef

    @property
    def ref(self) -> KeyRef:
        return self._ref

    @property
    def label(self) -> str | None:
        return self._ref.label

    def _sign_raw(self, data: bytes, mechanism: Mechanism) -> bytes:
        ref = self._ref

        def op(ts: TokenSession) -> bytes:
            key = ts.keys.get(ref)
            if key is None:
                key = ts.keys[ref] = find_private_key(ts, ref)
            return bytes(key.sign(data, mechanism=mechanism))

        try:
            return self._provider.run(op)
        except TOKEN_LOST:
            raise  # the pool's breaker needs to see these; a bare session maps them
        except p11e.PKCS11Error as exc:
            raise HsmError(
                f"token {self._provider.token_label!r} failed to sign: {type(exc).__name__}"
            ) from None

    def _refuse(self) -> NoReturn:
        raise HsmError("the CA key lives in the token and cannot be exported or used for ECDH")

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        self._refuse()

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(token={self._provider.token_label!r}, {self._ref})"


class HsmEcPrivateKey(_TokenKey, ec.EllipticCurvePrivateKey):
    """P-256 private key held in a PKCS#11 token; sign-only."""

    def __init__(
        self,
        provider: SessionProvider,
        ref: KeyRef | str,
        public: ec.EllipticCurvePublicKey | None = None,
    ) -> None:
        self._provider = provider
        self._ref = KeyRef(label=ref) if isinstance(ref, str) else ref
        if public is None:
            found = provider.run(lambda ts: public_key(ts, self._ref))
            if not isinstance(found, ec.EllipticCurvePublicKey):
                raise HsmError(f"key with {self._ref} is not an EC key")
            public = found
        self._public = public

    @property
    def curve(self) -> ec.EllipticCurve:
        return ec.SECP256R1()

    @property
    def key_size(self) -> int:
        return 256

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(
        self, data: bytes | Any, signature_algorithm: ec.EllipticCurveSignatureAlgorithm
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise HsmError("only ECDSA signatures are supported by the token key")
        algo = signature_algorithm.algorithm
        if isinstance(algo, Prehashed):
            digest = bytes(data)
        else:
            h = hashes.Hash(algo)
            h.update(bytes(data))
            digest = h.finalize()
        return der_ecdsa_signature(self._sign_raw(digest, Mechanism.ECDSA))

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        self._refuse()

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        self._refuse()


def der_ecdsa_signature(raw: bytes) -> bytes:
    """PKCS#11's ECDSA signature (r || s, two big-endian halves of equal length) as the
    DER ``Ecdsa-Sig-Value`` X.509 carries: byte operations, about twice as fast as going
    through integers and ``encode_dss_signature`` (the same bytes; tests/hsm holds it to
    that). Only for curves up to P-384, whose SEQUENCE is short-form (< 128 bytes)."""
    half = len(raw) // 2
    if not 0 < half <= 48 or len(raw) != 2 * half:
        raise HsmError(f"the token returned an ECDSA signature of {len(raw)} bytes")
    r = raw[:half].lstrip(b"\0") or b"\0"
    s = raw[half:].lstrip(b"\0") or b"\0"
    if r[0] & 0x80:
        r = b"\0" + r
    if s[0] & 0x80:
        s = b"\0" + s
    return b"".join((b"\x30", bytes((len(r) + len(s) + 4, 2, len(r))), r, bytes((2, len(s))), s))


_RSA_MECHANISMS = {
    "sha256": Mechanism.SHA256_RSA_PKCS,
    "sha384": Mechanism.SHA384_RSA_PKCS,
    "sha512": Mechanism.SHA512_RSA_PKCS,
}


class HsmRsaPrivateKey(_TokenKey, rsa.RSAPrivateKey):
    """RSA private key held in a PKCS#11 token; PKCS#1 v1.5 signatures only."""

    def __init__(self, provider: SessionProvider, ref: KeyRef, public: rsa.RSAPublicKey) -> None:
        self._provider = provider
        self._ref = ref
        self._public = public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def sign(
        self,
        data: bytes | Any,
        padding: padding.AsymmetricPadding,
        algorithm: Any,
    ) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15

        if not isinstance(padding, PKCS1v15):
            raise HsmError("the token RSA key signs with PKCS#1 v1.5 padding only")
        if not isinstance(algorithm, hashes.HashAlgorithm) or algorithm.name not in _RSA_MECHANISMS:
            raise HsmError("the token RSA key signs SHA-256, SHA-384 or SHA-512 messages")
        return self._sign_raw(bytes(data), _RSA_MECHANISMS[algorithm.name])

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        self._refuse()

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        self._refuse()
