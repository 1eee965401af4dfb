"""A cryptography private key whose signatures are made inside the token.

cryptography has no public external-signer API; its certificate and CSR builders accept any
``EllipticCurvePrivateKey`` whose ``sign`` returns a DER ECDSA signature. This class hashes
in Python, has the token compute raw ECDSA (CKM_ECDSA, which SoftHSM supports; python-pkcs11's
default ECDSA_SHA512 it rejects), and DER-encodes r||s. Everything that would reveal the key
raises. ``tests/hsm`` fails if a cryptography upgrade stops accepting it.
"""

from __future__ import annotations

from typing import Any, NoReturn

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    encode_dss_signature,
)
from pkcs11 import Mechanism
from pkcs11 import exceptions as p11e

from hsm.keys import find_private_key, public_key
from hsm.module import TokenSession
from provisioner.errors import HsmError


class HsmEcPrivateKey(ec.EllipticCurvePrivateKey):
    """P-256 private key held in a PKCS#11 token; sign-only."""

    def __init__(self, ts: TokenSession, label: str) -> None:
        self._ts = ts
        self._label = label
        self._key = find_private_key(ts, label)
        self._public = public_key(ts, label)

    @property
    def label(self) -> str:
        return self._label

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
        with self._ts.lock:
            try:
                raw = self._key.sign(digest, mechanism=Mechanism.ECDSA)
            except p11e.PKCS11Error as exc:
                raise HsmError(
                    f"token {self._ts.token_label!r} failed to sign: {type(exc).__name__}"
                ) from None
        half = len(raw) // 2
        return encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )

    def _refuse(self) -> NoReturn:
        raise HsmError("the CA key lives in the token and cannot be exported or used for ECDH")

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        self._refuse()

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        self._refuse()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        self._refuse()

    def __copy__(self) -> HsmEcPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> HsmEcPrivateKey:
        return self

    def __repr__(self) -> str:
        return f"HsmEcPrivateKey(token={self._ts.token_label!r}, label={self._label!r})"
