"""Signed checkpoints of the audit log, made with the audit key in the HSM.

The audit key is its own P-256 key in the factory token (label ``audit.key_label``), made
at the CA ceremony; only its public half leaves the token, as ``var/ca/audit-key.pem``,
which is what auditors pin. A checkpoint is written when a batch finishes, every
``checkpoint_every_events`` events and every ``checkpoint_every_s`` seconds while the log
grows: by the signer worker's background thread, or on demand (``audit checkpoint``).

Checkpoints are not audit events themselves: an event per checkpoint would grow the log
that the next checkpoint must then cover, for ever.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from hsm.keys import KeyAlgorithm, KeyRef, generate, key_labels
from hsm.module import TokenSession
from hsm.signer import SessionProvider, token_key
from provisioner.audit import checkpoint as cpmod
from provisioner.audit import refusals, tree
from provisioner.audit.chain import lock_for_append
from provisioner.audit.verify import AuditKey
from provisioner.db.engine import transaction
from provisioner.db.models import AuditCheckpoint, AuditEvent
from provisioner.errors import ConfigError
from provisioner.periodic import Periodic
from provisioner.settings import Settings

log = logging.getLogger(__name__)

BATCH_END = "batch.finished"


def audit_key_file(settings: Settings) -> Path:
    return settings.ca_dir / "audit-key.pem"


def ensure_audit_key(settings: Settings, ts: TokenSession) -> ec.EllipticCurvePublicKey:
    """Generate the audit key in the factory token if it is not there yet, and (re)write
    its public key file. Returns the public key."""
    label = settings.audit.key_label
    if label not in key_labels(ts):
        generate(ts, KeyRef(label, os.urandom(16)), KeyAlgorithm.EC_P256)
    pub = token_key(ts, label).public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)  # generated as P-256 above
    path = audit_key_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pub


def load_audit_key(settings: Settings, key_file: Path | None = None) -> AuditKey | None:
    """The key that checks checkpoints: ``key_file`` (an auditor's pinned copy) or the
    installed one; None when neither exists."""
    path = key_file or audit_key_file(settings)
    if key_file is None and not path.exists():
        return None
    pub = read_public_key(path)
    return AuditKey(pub, settings.audit.origin, settings.audit.origin)


def read_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """An EC public key from a PEM file, or a ConfigError saying what is wrong."""
    try:
        pub = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the audit public key {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"{path} is not a PEM public key") from None
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise ConfigError(f"{path} is not an EC P-256 public key")
    return pub


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _log_checkpoint(cp: AuditCheckpoint | None) -> None:
    if cp is not None:
        log.info("audit checkpoint at size %d (%s)", cp.size, cp.reason)


class Checkpointer:
    """Writes checkpoints with a token key; thread-safe, and safe with several signer
    processes (the write lock makes the second one see there is nothing new)."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        key: ec.EllipticCurvePrivateKey,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.settings = settings.audit
        self._key = key
        self._clock = clock
        self._started = clock()
        self._periodic = Periodic(
            "audit-checkpointer",
            self.settings.poll_s,
            self.tick,
            _log_checkpoint,
            log,
            "audit checkpoint not written",
        )

    @classmethod
    def for_provider(
        cls, engine: Engine, settings: Settings, provider: SessionProvider
    ) -> Checkpointer:
        """A checkpointer signing through ``provider`` (the signer's breaker-guarded pool)."""
        key = token_key(provider, settings.audit.key_label)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"audit key {settings.audit.key_label!r} is not an EC key")
        return cls(engine, settings, key)

    def due(self) -> str | None:
        """Why a checkpoint is due now, or None."""
        with Session(self.engine) as s:
            size = s.exec(select(func.max(AuditEvent.seq))).one() or 0
            last = s.exec(
                select(AuditCheckpoint.size, AuditCheckpoint.created_at)
                .order_by(col(AuditCheckpoint.size).desc())
                .limit(1)
            ).first()
            last_size = last[0] if last else 0
            if size <= last_size:
                return None
            ended = s.exec(
                select(AuditEvent.seq)
                .where(AuditEvent.event_type == BATCH_END, col(AuditEvent.seq) > last_size)
                .limit(1)
            ).first()
        if ended is not None:
            return "batch_end"
        if size - last_size >= self.settings.checkpoint_every_events:
            return "events"
        since = (
            datetime.strptime(last[1], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
            if last
            else self._started
        )
        if self._clock() - since >= self.settings.checkpoint_every_s:
            return "interval"
        return None

    def write(self, reason: str) -> AuditCheckpoint | None:
        """Sign a checkpoint over every event so far; None if the latest one covers them."""
        with transaction(self.engine) as s:
            lock_for_append(s)  # appenders wait, so size and root belong together
            size = s.exec(select(func.max(AuditEvent.seq))).one() or 0
            last = s.exec(select(func.max(AuditCheckpoint.size))).one() or 0
            if size == 0 or size <= last:
                return None
            root = tree.root(s, size)
            origin = self.settings.origin
            note = cpmod.sign(cpmod.Checkpoint(origin, size, root), origin, self._key)
            row = AuditCheckpoint(
                size=size, root_hash=root.hex(), note=note, reason=reason, created_at=_now()
            )
            s.add(row)
            return row

    def tick(self) -> AuditCheckpoint | None:
        refusals.close_windows(self.engine)  # closed refusal windows' counts reach the trail
        reason = self.due()
        return self.write(reason) if reason else None

    def start(self) -> None:
        """Check for due checkpoints every ``poll_s`` in a daemon thread; failures (a lost
        token, a busy database) are logged and retried on the next poll."""
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
