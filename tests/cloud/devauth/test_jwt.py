"""Device JWT verification: each Cloud IoT rule broken alone is refused under its own rule
name, good RS256 and ES256 tokens pass, and no refusal quotes the token or a key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.cloud.credentials import Credential, PublicKeyFormat
from provisioner.cloud.devauth.jwt import (
    MAX_LIFETIME_S,
    MAX_SKEW_S,
    DeviceClaims,
    JwtRefused,
    verify_device_jwt,
    verify_with_credential,
)
from tests.cloud.devauth.keys import b64url, credential, ec_key, make_jwt, public_pem, rsa_key
from tests.cloud.helpers import certificate_pem

PROJECT = "proj-1"
NOW = 1_800_000_000.0


def refused(token: str, creds: Sequence[Credential], now: float = NOW) -> JwtRefused:
    with pytest.raises(JwtRefused) as info:
        verify_device_jwt(token, project=PROJECT, credentials=creds, now=now)
    exc = info.value
    text = str(exc)
    assert text.startswith(f"{exc.rule}: ")
    # Never the token, its signature, or a key.
    for part in token.split("."):
        if len(part) > 8:
            assert part not in text
    for c in creds:
        assert c.key.splitlines()[1] not in text
    return exc


def test_good_es256_token() -> None:
    key = ec_key()
    token = make_jwt(key, project=PROJECT, now=NOW)
    claims = verify_device_jwt(token, project=PROJECT, credentials=[credential(key)], now=NOW)
    assert claims == DeviceClaims("ES256", int(NOW), int(NOW) + 3600, PROJECT)


def test_good_rs256_token() -> None:
    key = rsa_key()
    token = make_jwt(key, project=PROJECT, now=NOW)
    claims = verify_device_jwt(token, project=PROJECT, credentials=[credential(key)], now=NOW)
    assert claims.alg == "RS256"


def test_good_token_against_a_certificate_credential_and_the_matching_one_is_returned() -> None:
    key, other = ec_key(), ec_key()
    cert = Credential(PublicKeyFormat.ES256_X509_PEM, certificate_pem(key))
    token = make_jwt(key, project=PROJECT, now=NOW)
    _, used = verify_with_credential(
        token, project=PROJECT, credentials=[credential(other), cert], now=NOW
    )
    assert used == cert


def test_expired() -> None:
    key = ec_key()
    token = make_jwt(key, project=PROJECT, now=NOW - 3600, lifetime=3600)  # exp == now
    assert refused(token, [credential(key)]).rule == "exp"


def test_iat_too_far_ahead() -> None:
    key = ec_key()
    ahead = make_jwt(key, project=PROJECT, now=NOW + MAX_SKEW_S + 1)
    assert refused(ahead, [credential(key)]).rule == "iat"
    at_limit = make_jwt(key, project=PROJECT, now=NOW + MAX_SKEW_S)
    verify_device_jwt(at_limit, project=PROJECT, credentials=[credential(key)], now=NOW)


def test_lifetime_over_24h_plus_skew() -> None:
    key = ec_key()
    limit = MAX_LIFETIME_S + MAX_SKEW_S
    too_long = make_jwt(key, project=PROJECT, now=NOW, lifetime=limit + 1)
    assert refused(too_long, [credential(key)]).rule == "lifetime"
    longest = make_jwt(key, project=PROJECT, now=NOW, lifetime=limit)
    verify_device_jwt(longest, project=PROJECT, credentials=[credential(key)], now=NOW)


def test_wrong_audience() -> None:
    key = ec_key()
    token = make_jwt(key, project="another-project", now=NOW)
    assert refused(token, [credential(key)]).rule == "aud"


def test_alg_none() -> None:
    key = ec_key()
    claims = {"iat": int(NOW), "exp": int(NOW) + 60, "aud": PROJECT}
    token = (
        b64url(json.dumps({"alg": "none"}).encode())
        + "."
        + b64url(json.dumps(claims).encode())
        + "."
    )
    assert refused(token, [credential(key)]).rule == "alg"


def test_hs256_keyed_with_the_public_key_is_refused() -> None:
    # The classic confusion attack: HMAC with the device's public key as the secret.
    key = ec_key()
    pem = public_pem(key)
    head = b64url(json.dumps({"alg": "HS256"}).encode())
    body = b64url(json.dumps({"iat": int(NOW), "exp": int(NOW) + 60, "aud": PROJECT}).encode())
    mac = hmac.new(pem.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    token = f"{head}.{body}.{b64url(mac)}"
    assert refused(token, [credential(key)]).rule == "alg"


def test_rs256_token_against_an_es256_key() -> None:
    token = make_jwt(rsa_key(), project=PROJECT, now=NOW)
    assert refused(token, [credential(ec_key())]).rule == "alg"


def test_es256_header_on_an_rsa_signature() -> None:
    key = rsa_key()
    token = make_jwt(key, project=PROJECT, now=NOW, alg="ES256")
    assert refused(token, [credential(key)]).rule == "alg"


def test_bad_signature() -> None:
    key = ec_key()
    head, body, sig = make_jwt(key, project=PROJECT, now=NOW).split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[10] ^= 1
    token = f"{head}.{body}.{b64url(bytes(raw))}"
    assert refused(token, [credential(key)]).rule == "signature"


def test_claims_changed_after_signing() -> None:
    key = ec_key()
    head, _, sig = make_jwt(key, project=PROJECT, now=NOW).split(".")
    body = b64url(json.dumps({"iat": int(NOW), "exp": int(NOW) + 7200, "aud": PROJECT}).encode())
    assert refused(f"{head}.{body}.{sig}", [credential(key)]).rule == "signature"


def test_der_es256_signature_is_refused() -> None:
    """JWS ES256 is raw r||s; a DER signature (what a naive signer produces) is not one."""
    key = ec_key()
    head, body, _ = make_jwt(key, project=PROJECT, now=NOW).split(".")
    der = key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    assert refused(f"{head}.{body}.{b64url(der)}", [credential(key)]).rule == "signature"


def test_rsa_signature_from_another_key() -> None:
    token = make_jwt(rsa_key(1), project=PROJECT, now=NOW)
    assert refused(token, [credential(rsa_key(0))]).rule == "signature"


def test_expired_credential() -> None:
    key = ec_key()
    token = make_jwt(key, project=PROJECT, now=NOW)
    expired = credential(key, "2020-01-01T00:00:00Z")
    assert refused(token, [expired]).rule == "credential"


def test_expired_credential_is_skipped_for_a_current_one() -> None:
    old, new = ec_key(), ec_key()
    token = make_jwt(new, project=PROJECT, now=NOW)
    creds = [credential(old, "2020-01-01T00:00:00Z"), credential(new, "2099-01-01T00:00:00Z")]
    verify_device_jwt(token, project=PROJECT, credentials=creds, now=NOW)
    # ...but a token of the expired key is not accepted through the current one.
    stale = make_jwt(old, project=PROJECT, now=NOW)
    assert refused(stale, creds).rule == "signature"


def test_removed_credential() -> None:
    old, new = ec_key(), ec_key()
    token = make_jwt(old, project=PROJECT, now=NOW)
    assert refused(token, [credential(new)]).rule == "signature"
    assert refused(token, []).rule == "credential"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "e30.e30.e30.e30",
        "!!!.e30.AAAA",
        "e30=.e30.AAAA",
    ],
)
def test_not_a_jwt(token: str) -> None:
    assert refused(token, [credential(ec_key())]).rule == "format"


def _claims_token(claims: object, header: object = None) -> str:
    head = b64url(json.dumps(header or {"alg": "ES256"}).encode())
    return f"{head}.{b64url(json.dumps(claims).encode())}.{b64url(bytes(64))}"


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(NOW) + 60, "aud": PROJECT},  # no iat
        {"iat": int(NOW), "aud": PROJECT},  # no exp
        {"iat": int(NOW), "exp": int(NOW) + 60},  # no aud
        {"iat": NOW + 0.5, "exp": int(NOW) + 60, "aud": PROJECT},
        {"iat": str(int(NOW)), "exp": int(NOW) + 60, "aud": PROJECT},
        {"iat": True, "exp": int(NOW) + 60, "aud": PROJECT},
        {"iat": int(NOW), "exp": int(NOW) + 60, "aud": [PROJECT]},
        [1, 2, 3],
    ],
)
def test_bad_claims(claims: object) -> None:
    assert refused(_claims_token(claims), [credential(ec_key())]).rule == "format"


def test_bad_json_and_duplicate_claims() -> None:
    creds = [credential(ec_key())]
    head = b64url(b'{"alg":"ES256"}')
    assert refused(f"{head}.{b64url(b'{not json')}.{b64url(bytes(64))}", creds).rule == "format"
    dup = b'{"iat":1,"iat":%d,"exp":%d,"aud":"%s"}' % (int(NOW), int(NOW) + 60, PROJECT.encode())
    assert refused(f"{head}.{b64url(dup)}.{b64url(bytes(64))}", creds).rule == "format"


def test_oversized_token() -> None:
    key = ec_key()
    claims = {"iat": int(NOW), "exp": int(NOW) + 60, "aud": PROJECT, "pad": "x" * 9000}
    token = make_jwt(key, project=PROJECT, now=NOW, claims=claims)
    assert refused(token, [credential(key)]).rule == "format"


def test_critical_header_extension() -> None:
    key = ec_key()
    token = make_jwt(key, project=PROJECT, now=NOW, header={"alg": "ES256", "crit": ["x"]})
    assert refused(token, [credential(key)]).rule == "format"
