"""Envelopes of the line-station link come off the broker, where anyone with access may put
anything: every message is opened or refused with LinkRefusedError, never another error;
what seal() writes opens to the same contents; any change to a sealed envelope is refused."""

from __future__ import annotations

import base64
import contextlib
from functools import cache
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import example, given
from hypothesis import strategies as st

from provisioner.errors import LinkRefusedError
from provisioner.link.envelope import _signed_bytes, open_envelope, seal
from tests.properties.bounded import bounded

NOW = 1_700_000_000.0
SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=12)
JSON = st.recursive(
    SCALARS | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
FIELDS = ("v", "task", "from", "to", "kid", "nonce", "iat", "exp", "body", "sig")


@cache
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_for(sender: str, kid: str) -> ec.EllipticCurvePublicKey:
    if (sender, kid) != ("line", "kid-1"):
        raise LinkRefusedError("unknown_sender", "message refused: unknown sender")
    return _key().public_key()


def _open(data: object) -> Any:
    return open_envelope(
        data, task="station.sign", recipient="station-1", key_for=_key_for, now=NOW
    )


def _sealed(body: dict[str, Any]) -> dict[str, Any]:
    return seal(
        _key(),
        kid="kid-1",
        task="station.sign",
        sender="line",
        recipient="station-1",
        body=body,
        ttl_s=60,
        now=NOW,
    )


def _resigned(fields: dict[str, Any]) -> dict[str, Any]:
    """An envelope with these fields and a valid signature by the known sender's key: what
    a sender holding its key could put on the broker."""
    sig = _key().sign(_signed_bytes(fields), ec.ECDSA(hashes.SHA256()))
    return {**fields, "sig": base64.b64encode(sig).decode()}


@bounded(150)
@given(body=st.dictionaries(st.text(max_size=8), JSON, max_size=4))
def test_sealed_envelopes_open_to_what_was_sealed(body: dict[str, Any]) -> None:
    opened = _open(_sealed(body))
    assert (opened.body, opened.sender, opened.task, opened.recipient) == (
        body,
        "line",
        "station.sign",
        "station-1",
    )


@bounded(300)
@given(data=st.one_of(JSON, st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=10)))
def test_any_message_is_opened_or_refused(data: object) -> None:
    with contextlib.suppress(LinkRefusedError):
        _open(data)


@bounded(300)
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_any_changed_field_is_refused(field: str, value: object) -> None:
    envelope = _sealed({"device_id": 7, "certificate": "MIIB"})
    if envelope[field] == value and type(envelope[field]) is type(value):
        return
    with pytest.raises(LinkRefusedError):
        _open({**envelope, field: value})


@bounded(300)
@given(iat=st.integers(), exp=st.integers())
@example(iat=-(10**400), exp=-(10**400))  # expired by more than a float can hold
@example(iat=10**400, exp=10**400)
def test_signed_envelopes_with_any_validity_are_opened_or_refused(iat: int, exp: int) -> None:
    """Even a sender holding its key gets a refusal, not a crash, for absurd times."""
    fields = {k: v for k, v in _sealed({}).items() if k != "sig"}
    try:
        opened = _open(_resigned({**fields, "iat": iat, "exp": exp}))
    except LinkRefusedError:
        return
    assert iat <= NOW + 120 and exp - iat <= 7 * 24 * 3600 and exp + 120 >= NOW
    assert opened.expires_at == float(exp)
