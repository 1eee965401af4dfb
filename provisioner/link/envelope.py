"""Signed messages between the line server and stations.

Celery's own ``auth`` serializer signs only a message's body: the task name travels in the
unsigned headers and nothing stops a replay (research/line.md). An envelope signs what the
receiver needs to decide whether the message is meant for it, now, once::

    {"v": 1, "task": ..., "from": ..., "to": ..., "kid": <sender cert SHA-256>,
     "nonce": ..., "iat": ..., "exp": ..., "body": {...}, "sig": <base64 DER ECDSA>}

The signature (ECDSA P-256, SHA-256) covers the canonical JSON of every field but ``sig``,
prefixed with a domain tag, so a message cannot be relabelled (task), redirected (to),
attributed to someone else (from, kid), extended (exp) or altered (body). Replays are the
receiver's to refuse by remembering nonces until ``exp`` (:mod:`.gateway` keeps them in
the database).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.errors import LinkRefusedError

VERSION = 1
_DOMAIN = b"provisioner-link-v1\n"
# Clocks of the line server and its stations may differ by this much.
CLOCK_SKEW_S = 120
_MAX_TTL_S = 7 * 24 * 3600
# Times are Unix seconds a float holds exactly; beyond, arithmetic with the float clock
# overflows (an int of 400 digits) instead of refusing the message.
_MAX_TIME = 2**53


@dataclass(frozen=True)
class Opened:
    """A message whose signature, addressing and validity checked out."""

    task: str
    sender: str
    recipient: str
    kid: str
    nonce: str
    expires_at: float
    body: dict[str, Any]


def _signed_bytes(fields: Mapping[str, Any]) -> bytes:
    return _DOMAIN + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def seal(
    key: ec.EllipticCurvePrivateKey,
    *,
    kid: str,
    task: str,
    sender: str,
    recipient: str,
    body: Mapping[str, Any],
    ttl_s: float,
    now: float | None = None,
) -> dict[str, Any]:
    """A signed envelope for ``body`` (JSON values only), valid for ``ttl_s`` seconds."""
    iat = int(time.time() if now is None else now)
    fields: dict[str, Any] = {
        "v": VERSION,
        "task": task,
        "from": sender,
        "to": recipient,
        "kid": kid,
        "nonce": os.urandom(16).hex(),
        "iat": iat,
        "exp": iat + int(ttl_s),
        "body": dict(body),
    }
    sig = key.sign(_signed_bytes(fields), ec.ECDSA(hashes.SHA256()))
    return {**fields, "sig": base64.b64encode(sig).decode()}


def open_envelope(
    data: object,
    *,
    task: str,
    recipient: str,
    key_for: Callable[[str, str], ec.EllipticCurvePublicKey],
    now: float | None = None,
) -> Opened:
    """Check ``data`` and return what it carries, or raise LinkRefusedError.

    ``key_for(sender, kid)`` returns the public key of a known, unrevoked sender (and
    raises LinkRefusedError itself for an unknown or revoked one). The signature is checked
    before anything in the message is believed; then what it is for (``task``, ``to``) and
    when (``iat``, ``exp``)."""
    if not isinstance(data, dict):
        raise LinkRefusedError("malformed", "message refused: not a signed envelope")
    try:
        fields = {k: data[k] for k in ("v", "task", "from", "to", "kid", "nonce", "iat", "exp")}
        body = data["body"]
        sig = base64.b64decode(str(data["sig"]), validate=True)
    except (KeyError, binascii.Error, ValueError):
        raise LinkRefusedError("malformed", "message refused: not a signed envelope") from None
    if (
        fields["v"] != VERSION
        or not isinstance(body, dict)
        or not all(isinstance(fields[k], str) for k in ("task", "from", "to", "kid", "nonce"))
        or not all(isinstance(fields[k], int) for k in ("iat", "exp"))
        or not all(0 <= fields[k] <= _MAX_TIME for k in ("iat", "exp"))
        or len(fields["nonce"]) != 32
    ):
        raise LinkRefusedError("malformed", "message refused: malformed envelope")
    public = key_for(fields["from"], fields["kid"])
    try:
        public.verify(sig, _signed_bytes({**fields, "body": body}), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise LinkRefusedError(
            "bad_signature",
            f"message refused: the signature of {fields['from']} does not verify "
            "(altered, or signed with another key)",
        ) from None
    if fields["task"] != task:
        raise LinkRefusedError(
            "wrong_task",
            f"message refused: signed for task {fields['task']!r}, delivered as {task!r} "
            "(relabelled)",
        )
    if fields["to"] != recipient:
        raise LinkRefusedError(
            "wrong_recipient",
            f"message refused: addressed to {fields['to']!r}, not {recipient!r}",
        )
    t = time.time() if now is None else now
    if fields["exp"] - fields["iat"] > _MAX_TTL_S or fields["iat"] > t + CLOCK_SKEW_S:
        raise LinkRefusedError("malformed", "message refused: validity out of bounds")
    if fields["exp"] + CLOCK_SKEW_S < t:
        raise LinkRefusedError(
            "expired", f"message refused: expired {int(t - fields['exp'])} s ago"
        )
    return Opened(
        task=fields["task"],
        sender=fields["from"],
        recipient=fields["to"],
        kid=fields["kid"],
        nonce=fields["nonce"],
        expires_at=float(fields["exp"]),
        body=body,
    )
