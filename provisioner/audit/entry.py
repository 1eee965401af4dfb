"""The canonical bytes of one audit event: what the hash chain and the Merkle leaf cover.

Pure (stdlib only) on purpose: an auditor's offline proof check recomputes leaf hashes from
the fields in a proof file with exactly this function and nothing of the database.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

# Bump when the field list changes: old entries keep their old encoding's hashes.
ENTRY_VERSION = 2


@dataclass(frozen=True)
class Entry:
    """One event's fields, exactly as hashed (``payload`` is its canonical JSON text)."""

    seq: int
    ts: str
    actor: str
    role: str | None
    event_type: str
    station_id: str | None
    socket: int | None
    batch_id: int | None
    device_id: int | None
    chip_serial: str | None
    payload: str

    def encode(self) -> bytes:
        """Canonical JSON array: field order fixed, no whitespace, ASCII only."""
        return json.dumps(
            [
                ENTRY_VERSION,
                self.seq,
                self.ts,
                self.actor,
                self.role,
                self.event_type,
                self.station_id,
                self.socket,
                self.batch_id,
                self.device_id,
                self.chip_serial,
                self.payload,
            ],
            separators=(",", ":"),
            ensure_ascii=True,
        ).encode()

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Entry:
        """The entry back from :meth:`as_json` output; a wrong field set or type raises
        ValueError (a proof file is untrusted input)."""
        names = set(cls.__dataclass_fields__)
        if set(d) != names:
            raise ValueError(f"event fields differ: expected {sorted(names)}")
        for name in ("seq", "socket", "batch_id", "device_id"):
            v = d[name]
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise ValueError(f"event field {name} must be an integer")
        for name in ("ts", "actor", "event_type", "payload"):
            if not isinstance(d[name], str):
                raise ValueError(f"event field {name} must be a string")
        for name in ("role", "station_id", "chip_serial"):
            if d[name] is not None and not isinstance(d[name], str):
                raise ValueError(f"event field {name} must be a string or null")
        if d["seq"] is None or d["seq"] < 1:
            raise ValueError("event field seq must be a positive integer")
        return cls(**d)


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
