"""Re-signing the CRLs on a schedule, in the process that holds the CA key (the line's
``hsm`` worker, first pool child).

Each revocation made through ``ca revoke`` (or the dashboard, or ``fleet revoke``)
publishes at once; the schedule covers the rest:

* a CRL older than ``crl.refresh_s`` is signed again, so relying parties that fetch it
  see a recent ``thisUpdate``;
* one past half of its validity (``nextUpdate - thisUpdate``) is signed again whatever
  ``refresh_s`` says, so a relying party never holds one past its nextUpdate while the
  line runs;
* a missing or unreadable CRL (a new intermediate after ``ca rotate``, a fresh CA) and a
  CRL that lists fewer certificates than :func:`provisioner.ca.status.revoked_entries`
  reports (a revocation made by a path that did not publish: a renewal superseding an
  identity certificate, a station revoked) are published at the next poll.

The decision reads the published files and the database only, so any number of processes
may check; the poll runs in one. The root's CRL is re-signed only when it is missing or
past half of its (long) validity, and only where the root key is on this machine; with an
offline root the schedule logs what to import instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from sqlalchemy.engine import Engine
from sqlmodel import Session

from provisioner.ca.ceremony import LoadedCa, store_of
from provisioner.ca.revocation import PublishedCrl, crl_path, publish
from provisioner.ca.root_crl import publish_root, root_crl_path, root_key_here
from provisioner.ca.status import revoked_entries
from provisioner.ca.store import fingerprint
from provisioner.enrollment.service import HSM_LOCK
from provisioner.periodic import Periodic
from provisioner.settings import Settings

log = logging.getLogger("provisioner.ca.crl")

ACTOR = "system:crl-schedule"


def poll_interval(settings: Settings) -> float:
    """How often the schedule looks: a tenth of ``refresh_s``, between 1 s and a minute
    (cheap: a few small files and one query)."""
    return max(1.0, min(60.0, settings.crl.refresh_s / 10))


def _crl_reason(
    crl: x509.CertificateRevocationList | None, refresh: timedelta | None, now: datetime
) -> str | None:
    """Why a published CRL must be signed again now (None: it is fine)."""
    if crl is None:
        return "missing"
    this_update, next_update = crl.last_update_utc, crl.next_update_utc
    if next_update is None:
        return "no nextUpdate"
    if refresh is not None and now - this_update >= refresh:
        return "refresh"
    if now >= this_update + (next_update - this_update) / 2:
        return "half of its validity passed"
    return None


def _read(path: Path) -> x509.CertificateRevocationList | None:
    try:
        return x509.load_der_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Due:
    """What a poll found to do: CRL name -> why."""

    intermediates: dict[str, str]
    root: str | None

    def __bool__(self) -> bool:
        return bool(self.intermediates) or self.root is not None


def due(settings: Settings, engine: Engine, now: datetime | None = None) -> Due:
    """Which CRLs need signing now, and why."""
    now = now or datetime.now(UTC)
    refresh = timedelta(seconds=settings.crl.refresh_s)
    store = store_of(settings)
    issuers = store.intermediates() or {
        store.current_name(settings.hsm.ca_key_label): store.intermediate()
    }
    reasons: dict[str, str] = {}
    with Session(engine) as s:
        for name, cert in issuers.items():
            crl = _read(crl_path(settings, name))
            why = _crl_reason(crl, refresh, now)
            if why is None and crl is not None:
                listed = len(revoked_entries(s, fingerprint(cert), cert))
                if listed != len(crl):
                    why = f"{listed} revoked, {len(crl)} listed"
            if why is not None:
                reasons[name] = why
    root_why = _crl_reason(_read(root_crl_path(settings)), None, now)
    return Due(reasons, root_why)


class CrlSchedule:
    """Polls :func:`due` every :func:`poll_interval` and publishes what is due, signing the
    intermediates' CRLs with ``ca`` (the signer's own token connection) and the root's
    in the root token when it is on this machine."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        ca: LoadedCa,
        poll_s: float | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings, self.engine, self.ca, self._clock = settings, engine, ca, clock
        self._warned_offline = False
        self._periodic = Periodic(
            "crl-schedule",
            poll_s if poll_s is not None else poll_interval(settings),
            self.tick,
            _log_published,
            log,
            "CRLs not re-published",
        )

    def tick(self, now: datetime | None = None) -> list[PublishedCrl]:
        """Publish what is due now (every intermediate's CRL together when one is due)."""
        todo = due(self.settings, self.engine, now or self._clock())
        out: list[PublishedCrl] = []
        if todo.intermediates:
            log.info(
                "re-publishing CRLs: %s",
                ", ".join(f"{n} ({why})" for n, why in sorted(todo.intermediates.items())),
            )
            with HSM_LOCK:
                out += publish(self.settings, self.engine, self.ca, ACTOR)
        if todo.root is not None:
            if root_key_here(self.settings):
                with HSM_LOCK:
                    out.append(publish_root(self.settings, self.engine, ACTOR))
            elif not self._warned_offline:
                self._warned_offline = True  # once per process: the operator's job
                log.warning(
                    "the root CRL is %s and the root key is offline: import a fresh one "
                    "with `provisioner ca crl --import-root ROOT.crl`",
                    todo.root,
                )
        return out

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()


def _log_published(published: list[PublishedCrl]) -> None:
    for p in published:
        log.info("CRL %s #%d published: %d revoked", p.name, p.number, p.entries)
