"""What ``provisioner ca show`` reports: public CA material and the signers' token health.

Reads only public files (no PIN, no token session): the certificates under ``<var>/ca``, the
pending CSRs and the status files the running signers write (``<var>/run/hsm-signer-*.json``,
one per signer process; a file whose process is gone is reported as stale).
"""

from __future__ import annotations

import json
import os
from typing import Any

from cryptography import x509

from provisioner.ca.store import fingerprint
from provisioner.settings import Settings


def _cert(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial_number": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "key": _key_kind(cert),
        "sha256": fingerprint(cert),
    }


def _key_kind(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    pub = cert.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return f"EC {pub.curve.name}"
    if isinstance(pub, rsa.RSAPublicKey):
        return f"RSA {pub.key_size}"
    return type(pub).__name__


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signer_statuses(settings: Settings) -> list[dict[str, Any]]:
    out = []
    for path in sorted((settings.var / "run").glob("hsm-signer-*.json")):
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        body["stale"] = not _alive(int(body.get("pid", 0)))
        out.append(body)
    return out


def ca_overview(settings: Settings) -> dict[str, Any]:
    """Everything ``ca show`` prints, as JSON-ready data."""
    from provisioner.ca.ceremony import store_of

    store = store_of(settings)
    if not store.intermediate_pem.exists():
        return {"initialised": False, "pending": sorted(store.pending())}
    current = store.intermediate()
    name = store.current_name(settings.hsm.ca_key_label)
    return {
        "initialised": True,
        "root": _cert(store.root()),
        "intermediate": {
            "name": name,
            "key_uri": settings.ca_key_uri(name),
            **_cert(current),
        },
        "previous": [
            {"name": n, **_cert(c)} for n, c in store.intermediates().items() if c != current
        ],
        "pending": sorted(store.pending()),
        "signers": signer_statuses(settings),
    }
