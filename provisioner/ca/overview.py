"""What ``provisioner ca show`` reports: public CA material and the signers' token health.

:func:`ca_overview` reads only public files (no PIN, no token session): the certificates
under ``<var>/ca``, the pending CSRs and the status files the running signers write
(``<var>/run/hsm-signer-*.json``, one per signer process; a file whose process is gone is
reported as stale). The dashboard shows exactly that.

:func:`key_protections` is the one part that opens the tokens (with the PIN files, in the
``ca show`` process only): how each CA, audit and manifest key is protected as the token
itself reports it (sensitive, extractable, modifiable, destroyable), so an administrator
sees a key an older CA or a token without those attributes left modifiable or destroyable.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cryptography import x509

from provisioner.ca.store import fingerprint
from provisioner.errors import ProvisionerError
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


def key_protections(settings: Settings) -> dict[str, Any]:
    """Each key of the CA as its token reports it: ``keys`` (role, label, token and the
    four attributes) and ``unavailable`` (why a token could not be read: absent, no PIN
    file, offline root). Never raises for a token problem: ``ca show`` must work while the
    HSM is away."""
    from pkcs11 import exceptions as p11e

    from hsm.keys import key_protection
    from hsm.module import TokenSession
    from provisioner.audit.checkpointer import audit_key_file
    from provisioner.ca.ceremony import factory_pin, find_root_label, open_module, store_of
    from provisioner.ca.manifest_key import KEY_LABEL, signer_file

    store = store_of(settings)
    keys: list[dict[str, Any]] = []
    unavailable: list[str] = []
    factory: list[tuple[str, str]] = []
    if store.intermediate_pem.exists():
        current = store.current_name(settings.hsm.ca_key_label)
        factory.append(("intermediate", current))
        factory += [("previous", n) for n in store.intermediates() if n != current]
    factory += [("pending", n) for n in sorted(store.pending())]
    if audit_key_file(settings).exists():
        factory.append(("audit", settings.audit.key_label))
    if signer_file(settings).exists():
        factory.append(("manifest", KEY_LABEL))

    def read(ts: TokenSession, role: str, label: str | None) -> None:
        try:
            if label is None:  # the root: whichever root key belongs to root.pem
                label = find_root_label(settings, ts, store.root())
            keys.append({"role": role, **key_protection(ts, label).as_json()})
        except (ProvisionerError, p11e.PKCS11Error) as exc:
            unavailable.append(f"{role} key {label or ''}: {exc}".replace("  ", " "))

    def token(label: str, pin_file: Any, wanted: list[tuple[str, str | None]]) -> None:
        if not wanted:
            return
        if settings.softhsm_conf.exists() and not settings.token_dir.exists():
            # SoftHSM's token directory is gone (the token pulled): opening the module would
            # create an empty one, and the token put back would then land inside it.
            unavailable.append(f"token {label!r}: its directory {settings.token_dir} is absent")
            return
        try:
            with open_module(settings) as mod:
                if mod.find_token(label) is None or not pin_file.exists():
                    unavailable.append(f"token {label!r} is not on this machine (or no PIN file)")
                    return
                ts = mod.open_token(label, pin_file)
                try:
                    for role, key_label in wanted:
                        read(ts, role, key_label)
                finally:
                    ts.close()
        except (ProvisionerError, p11e.PKCS11Error, OSError) as exc:
            unavailable.append(f"token {label!r}: {exc}")

    if store.root_pem.exists():
        token(settings.hsm.root_token, settings.root_pin_file, [("root", None)])
    source = factory_pin(settings)
    token(settings.hsm.factory_token, source.path or settings.pin_file, list(factory))
    return {"keys": keys, "unavailable": unavailable}
