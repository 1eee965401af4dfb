"""The canonical bytes of one audit event: what the hash chain and the Merkle leaf cover.

The encoding itself (:class:`Entry`, :data:`ENTRY_VERSION`) lives in the standalone
verifier (:mod:`provisioner.audit.verifier`, stdlib + cryptography only) so an auditor's
offline check recomputes leaf hashes with exactly the code the product uses. What is only
the product's business, refusing secrets in payloads and naming roles, stays here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from provisioner.audit.verifier import ENTRY_VERSION, Entry

__all__ = ["ENTRY_VERSION", "Entry", "canonical_payload", "role_of"]

_SECRET_WORDS = ("pin", "password", "token", "secret", "private")


def canonical_payload(payload: Mapping[str, Any]) -> str:
    """The payload as canonical JSON. A key that smells of a secret is a programming error:
    the trail must never carry a PIN, token or key (``*_hash`` keys are allowed)."""
    for key in payload:
        low = key.lower()
        if any(w in low for w in _SECRET_WORDS) and not low.endswith("_hash"):
            raise ValueError(f"audit payload key {key!r} looks like a secret; never audit secrets")
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def role_of(actor: str) -> str | None:
    """Actors are ``role:name`` (``operator:alice``, ``station:line1``); a system principal
    without a name (``signer``) is its own role."""
    role, _, _ = actor.partition(":")
    return role or None
