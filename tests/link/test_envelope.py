"""Signed link envelopes: what a receiver refuses before it believes anything."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.errors import LinkRefusedError
from provisioner.link.envelope import open_envelope, seal

KEY = ec.generate_private_key(ec.SECP256R1())
OTHER = ec.generate_private_key(ec.SECP256R1())


def _sealed(**over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "kid": "k1",
        "task": "t.request",
        "sender": "station:a",
        "recipient": "line",
        "body": {"op": "load", "args": {"device": 1}},
        "ttl_s": 60,
    }
    args.update(over)
    return seal(KEY, **args)


def _open(
    msg: object, *, task: str = "t.request", recipient: str = "line", now: float | None = None
) -> Any:
    def key_for(sender: str, kid: str) -> ec.EllipticCurvePublicKey:
        if (sender, kid) != ("station:a", "k1"):
            raise LinkRefusedError("unknown_sender", f"unknown {sender} {kid}")
        return KEY.public_key()

    return open_envelope(msg, task=task, recipient=recipient, key_for=key_for, now=now)


def _reason(msg: object, **kw: Any) -> str:
    with pytest.raises(LinkRefusedError) as info:
        _open(msg, **kw)
    return info.value.reason


def test_a_sealed_message_opens_with_what_it_carries() -> None:
    opened = _open(_sealed())
    assert opened.sender == "station:a" and opened.body["args"] == {"device": 1}
    assert len(opened.nonce) == 32 and opened.nonce != _open(_sealed()).nonce


def test_every_signed_field_is_bound() -> None:
    for path, value in [
        (("body", "args", "device"), 2),  # altered body
        (("exp",), None),  # extended validity
        (("nonce",), "0" * 32),  # fresh-looking replay
        (("to",), "station:b"),
        (("task",), "t.other"),
    ]:
        msg = _sealed()
        target: Any = msg
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value if value is not None else target[path[-1]] + 3600
        assert _reason(msg) == "bad_signature", path


def test_a_message_signed_with_another_key_is_refused() -> None:
    msg = seal(
        OTHER, kid="k1", task="t.request", sender="station:a", recipient="line", body={}, ttl_s=60
    )
    assert _reason(msg) == "bad_signature"


def test_a_relabelled_message_is_refused() -> None:
    assert _reason(_sealed(), task="t.provision") == "wrong_task"


def test_a_message_for_someone_else_is_refused() -> None:
    assert _reason(_sealed(recipient="station:b")) == "wrong_recipient"


def test_an_unknown_sender_is_refused_before_anything_else() -> None:
    assert _reason(_sealed(sender="station:b")) == "unknown_sender"
    assert _reason(_sealed(kid="k2")) == "unknown_sender"


def test_expired_and_future_messages_are_refused() -> None:
    assert _reason(_sealed(now=time.time() - 3600)) == "expired"
    assert _reason(_sealed(now=time.time() + 3600)) == "malformed"
    assert _reason(_sealed(ttl_s=30 * 24 * 3600)) == "malformed"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda m: "not a dict",
        lambda m: {k: v for k, v in m.items() if k != "sig"},
        lambda m: {**m, "sig": "***"},
        lambda m: {**m, "v": 2},
        lambda m: {**m, "body": "text"},
        lambda m: {**m, "iat": "yesterday"},
        lambda m: {**m, "nonce": "short"},
    ],
)
def test_malformed_envelopes_are_refused(mangle: Any) -> None:
    assert _reason(mangle(copy.deepcopy(_sealed()))) == "malformed"
