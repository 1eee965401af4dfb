"""The admin and operator commands of the preprovisioned mode, as typed: the manufacturer
root installed (audited) and a batch created in mode preprovisioned; wrong input refused
before anything is written."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlmodel import select

from provisioner.chips.emulator.manufacturer import EmulatedManufacturer
from provisioner.db.engine import make_engine, transaction
from provisioner.db.models import AuditEvent, Batch
from tests.conftest import make_station, run_cli


def _leaf_pem() -> bytes:
    """A self-signed certificate that is not a CA: refused as a root."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a ca")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_trust_a_root_then_create_a_preprovisioned_batch(
    tmp_path: Path, manufacturer: EmulatedManufacturer
) -> None:
    st = make_station(tmp_path / "st")
    env = st.env()
    made = run_cli(
        "batch",
        "create",
        "-n",
        "2",
        "-s",
        "line1",
        "--mode",
        "preprovisioned",
        "--part",
        "trust-and-go",
        env=env,
    )
    assert made.returncode != 0 and "provisioner manufacturer trust FILE" in made.stderr

    bad = tmp_path / "leaf.pem"
    bad.write_bytes(_leaf_pem())
    refused = run_cli("manufacturer", "trust", str(bad), env=env)
    assert refused.returncode != 0 and "not a CA certificate" in refused.stderr
    assert not st.settings.manufacturer_root_file.exists()

    root = tmp_path / "root.pem"
    root.write_bytes(manufacturer.root_pem())
    done = run_cli("manufacturer", "trust", str(root), env=env)
    assert done.returncode == 0, done.stderr
    assert st.settings.manufacturer_root_file.read_bytes() == manufacturer.root_pem()
    shown = json.loads(run_cli("manufacturer", "show", "--json", env=env).stdout)
    digest = manufacturer.root_cert.fingerprint(hashes.SHA256()).hex()
    assert shown["root_fingerprint_sha256"] == digest

    made = run_cli(
        "batch",
        "create",
        "-n",
        "2",
        "-s",
        "line1",
        "--mode",
        "preprovisioned",
        "--part",
        "trust-and-go",
        "--json",
        env=env,
    )
    assert made.returncode == 0, made.stderr
    out = json.loads(made.stdout)
    assert (out["mode"], out["part"]) == ("preprovisioned", "trust-and-go")
    wrong = run_cli(
        "batch", "create", "-n", "1", "-s", "line1", "--mode", "preprovisioned", env=env
    )
    assert wrong.returncode != 0 and "--part must be one of" in wrong.stderr

    engine = make_engine(st.settings.db_url)
    with transaction(engine) as s:
        batch = s.exec(select(Batch)).one()
        assert (batch.mode, batch.part, batch.count) == ("preprovisioned", "trust-and-go", 2)
        trusted = s.exec(
            select(AuditEvent).where(AuditEvent.event_type == "manufacturer.root_trusted")
        ).one()
        created = s.exec(select(AuditEvent).where(AuditEvent.event_type == "batch.created")).one()
    assert trusted.payload is not None and digest in trusted.payload
    assert created.payload is not None and "preprovisioned" in created.payload

    # The operator's status names where the certificates come from, not a quota.
    status = run_cli("batch", "status", str(out["id"]), env=env)
    assert status.returncode == 0, status.stderr
    assert "certificates: the parts' own (trust-and-go), none issued" in status.stdout
    assert "quota:" not in status.stdout
