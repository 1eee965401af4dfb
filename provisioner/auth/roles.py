"""Roles and the actions each one may take.

Every CLI command and API endpoint that acts on the system names its action here; the
table is the single place that says who may do it (and the role matrix test walks it).
Separation of duties: operators run the line, auditors read the trail, admins run the CA,
the registries and the accounts. An admin may also run batches (a small factory has one
engineer) but an operator never touches the CA, and only auditors and admins read the
audit trail.

One command takes no role at all: ``users recover-admin``, the break-glass for a lost last
admin, is authorised by root on the line server plus the factory token's SO PIN instead
(:mod:`provisioner.auth.recovery`), since there is then no admin left to authorise it.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    OPERATOR = "operator"
    AUDITOR = "auditor"
    ADMIN = "admin"
    # Prometheus' scrape account: reads the metrics and the services' health, nothing else.
    MONITOR = "monitor"


_OPS = frozenset({Role.OPERATOR, Role.ADMIN})
_READ_BATCHES = frozenset({Role.OPERATOR, Role.AUDITOR, Role.ADMIN})
_AUDIT = frozenset({Role.AUDITOR, Role.ADMIN})
_ADMIN = frozenset({Role.ADMIN})
_METRICS = frozenset({Role.OPERATOR, Role.AUDITOR, Role.ADMIN, Role.MONITOR})

ACTIONS: dict[str, frozenset[Role]] = {
    # operators: batches and stations
    "batch.create": _OPS,
    "batch.start": _OPS,
    "batch.control": _OPS,  # pause, resume, cancel, close, retry failed devices
    "batch.read": _READ_BATCHES,
    "station.probe": _OPS,
    "station.status": _OPS,
    "station.feed": _OPS,  # emulated jigs: put a chip in a socket or take it out
    "services.run": _OPS,
    "services.status": _READ_BATCHES | {Role.MONITOR},
    "metrics.read": _METRICS,  # GET /metrics (counts and latencies, never device data)
    "demo.run": _OPS,
    "registry.sync": _OPS,  # uploading what waits is line operation, not registry admin
    "manifest.build": _OPS,  # a batch's deliverable, signed with the manifest key
    # auditors: the trail, read-only
    "audit.verify": _AUDIT,
    "audit.query": _AUDIT,
    "audit.export": _AUDIT,
    "audit.prove": _AUDIT,
    "audit.consistency": _AUDIT,
    # a batch's signed report for a customer or certification body (signed with the audit
    # key in the HSM: the content is built from the records by the command, never supplied)
    "report.batch": _AUDIT,
    # admins: CA, registries, users and tokens, and forcing a checkpoint (uses the HSM)
    "audit.checkpoint": _ADMIN,
    "batch.quota": _ADMIN,  # a batch's certificate quota is the order's licensed quantity
    "ca.init": _ADMIN,
    "ca.csr": _ADMIN,
    "ca.import_cert": _ADMIN,
    "ca.rotate": _ADMIN,
    "ca.show": _ADMIN,
    "ca.revoke": _ADMIN,
    "ca.crl": _ADMIN,
    # the manufacturer root pre-provisioned parts must chain to (what the line trusts)
    "manufacturer.trust": _ADMIN,
    "manufacturer.show": _AUDIT,
    "device.rotate_key": _ADMIN,  # a field device's credentials in the registry
    "users.manage": _ADMIN,
    "users.read": _ADMIN,
    # admins: which station PCs may join the line (enrollment tokens, revocation) and the
    # line server's own certificate (issued by the HSM CA)
    "station.manage": _ADMIN,
    "station.identities": _AUDIT,
    "line.identity": _ADMIN,
    # admins: devices enrolled in the field (enrollment tokens per registry, revocation);
    # auditors may read the tokens' and devices' state (never a token)
    "fleet.manage": _ADMIN,
    "fleet.read": _AUDIT,
    "fleet.revoke": _ADMIN,
}


def allowed(role: str, action: str) -> bool:
    """Whether ``role`` may take ``action``; an action missing from the table is a bug."""
    return role in ACTIONS[action]
