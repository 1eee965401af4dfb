"""Whether the services the line depends on answer: the signer and the registry.

A stalled count is not a diagnosis. The supervisor runs :class:`HealthMonitor` in a thread;
every ``interval_s`` it asks the signer for its status through the ``hsm`` queue (a frozen,
stopped or wedged signer does not answer within ``timeout_s``; a signer whose token is lost
answers "breaker open") and asks the built-in registry for ``/healthz``. The result is kept
in the ``service_health`` table (``services status`` reads it), and every change of state
appends ``service.unavailable`` / ``service.recovered`` to the audit trail in the same
transaction, so a change is never recorded without its event or the reverse.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import httpx
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from sqlalchemy.engine import Engine

from provisioner.audit import chain
from provisioner.db.engine import transaction
from provisioner.db.models import ServiceHealth, utcnow
from provisioner.settings import Settings
from workers.queues import HSM_QUEUE, SIGNER_STATUS_TASK

log = logging.getLogger("provisioner.health")

SIGNER = "signer"
REGISTRY = "registry"
ACTOR = "supervisor"
CANNOT_ASK = "cannot ask the signer"


@dataclass(frozen=True)
class Probe:
    name: str
    up: bool
    detail: str


def probe_signer(app: Celery, timeout_s: float) -> Probe:
    """Ask the hsm worker what it holds; no answer in time means the signer is down."""
    try:
        res = app.send_task(SIGNER_STATUS_TASK, queue=HSM_QUEUE, expires=timeout_s)
        out = res.get(timeout=timeout_s)
    except CeleryTimeoutError:
        return Probe(
            SIGNER,
            False,
            f"no answer within {timeout_s:.0f}s (hsm worker stopped, frozen or overloaded)",
        )
    except Exception as exc:  # the broker itself is unreachable, or the task failed
        msg = " ".join(str(exc).split())
        return Probe(SIGNER, False, f"{CANNOT_ASK}: {type(exc).__name__}: {msg}"[:300])
    if not isinstance(out, dict):
        return Probe(SIGNER, False, f"unexpected answer {out!r}"[:300])
    if out.get("breaker") == "open":
        return Probe(SIGNER, False, f"token unavailable: {out.get('last_error')}"[:300])
    return Probe(SIGNER, True, f"CA {out.get('ca')}, breaker {out.get('breaker')}")


def probe_registry(settings: Settings, timeout_s: float) -> Probe | None:
    """GET ``/healthz`` of a Cloud IoT-shaped registry (the built-in one answers 200; any
    answer below 500 shows the server is there). Other kinds are not probed: their only
    cheap calls cost API quota."""
    if settings.registry.kind != "cloudiot":
        return None
    url = settings.registry_url.rstrip("/") + "/healthz"
    try:
        resp = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return Probe(REGISTRY, False, f"{url}: {type(exc).__name__}")
    if resp.status_code >= 500:
        return Probe(REGISTRY, False, f"{url}: HTTP {resp.status_code}")
    return Probe(REGISTRY, True, f"{url}: HTTP {resp.status_code}")


def record(engine: Engine, probe: Probe) -> str | None:
    """Store the probe; on a change of state (or a first sighting that is down) append its
    audit event in the same transaction. Returns the event type written, if any."""
    now = utcnow()
    event: str | None = None
    with transaction(engine) as s:
        row = s.get(ServiceHealth, probe.name)
        if row is None:
            row = ServiceHealth(name=probe.name, up=probe.up, since=now)
            event = None if probe.up else "service.unavailable"
        elif row.up != probe.up:
            row.up, row.since = probe.up, now
            event = "service.recovered" if probe.up else "service.unavailable"
        row.checked_at, row.detail = now, probe.detail
        s.add(row)
        if event is not None:
            chain.append(
                s, event, actor=ACTOR, payload={"service": probe.name, "detail": probe.detail}
            )
    return event


class HealthMonitor:
    """Probes every ``interval_s`` until stopped. One Celery app of its own: the monitor's
    thread is the only one to use it."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        interval_s: float = 15.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.app = self._new_app()

    def _new_app(self) -> Celery:
        from provisioner.dispatch import celery_app

        return celery_app(self.settings)

    def check_once(self, stop: threading.Event | None = None) -> list[Probe]:
        """Probe each service and record the result; nothing is recorded once ``stop`` is
        set (services going down on purpose are not an outage)."""
        signer = probe_signer(self.app, self.timeout_s)
        if not signer.up and signer.detail.startswith(CANNOT_ASK):
            # Celery's clients give up for good once Redis was away too long ("the Celery
            # application must be restarted"): ask again with a new one before judging.
            self.app.close()
            self.app = self._new_app()
            signer = probe_signer(self.app, self.timeout_s)
        probes = [signer]
        reg = probe_registry(self.settings, self.timeout_s)
        if reg is not None:
            probes.append(reg)
        if stop is not None and stop.is_set():
            return probes
        for p in probes:
            event = record(self.engine, p)
            if event is not None:
                log.warning("%s: %s (%s)", event, p.name, p.detail)
        return probes

    def run(self, stop: threading.Event, first_delay_s: float = 0.0) -> None:
        """Probe until ``stop`` is set; a failing probe or database never ends the loop."""
        if stop.wait(first_delay_s):
            return
        while not stop.is_set():
            try:
                self.check_once(stop)
            except Exception:
                log.exception("health check failed")
            if stop.wait(self.interval_s):
                return
