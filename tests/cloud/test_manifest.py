"""Per-batch manifests in Microchip's format, signed by the manifest key in the real SoftHSM
token, built and verified through the CLI (verification in a fresh process that has only the
manifest and the signer certificate)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsm.keys import key_attributes
from provisioner.ca.ceremony import factory_pin, open_module
from provisioner.uploads import manifest
from tests.cloud.test_forwarder import _devices
from tests.conftest import run_cli


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, cwd=cwd)


def test_manifest_built_in_the_hsm_and_verified_offline(
    env: dict[str, Any], tmp_path: Path
) -> None:
    settings = env["settings"]
    ids = _devices(env, 3)
    with open_module(settings) as mod:
        ts = mod.open_token(settings.hsm.factory_token, factory_pin(settings))
        try:
            attrs = key_attributes(ts, manifest.KEY_LABEL)
        finally:
            ts.close()
    assert attrs["sensitive"] and attrs["never_extractable"] and not attrs["extractable"]
    signer = x509.load_pem_x509_certificate(manifest.signer_file(settings).read_bytes())
    signer.verify_directly_issued_by(signer)  # self-signed by the token key
    assert signer.public_key() != env["signer"].ca.intermediate_cert.public_key()

    run_env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    run_env["PROVISIONER_VAR_DIR"] = str(settings.var_dir)
    out = tmp_path / "m.json"
    built = _cli("manifest", "build", "--batch", "1", "-o", str(out), cwd=tmp_path, env=run_env)
    assert built.returncode == 0, built.stderr
    entries = json.loads(out.read_text())
    assert len(entries) == 3

    payload = json.loads(manifest.unb64url(entries[0]["payload"]))
    header = json.loads(manifest.unb64url(entries[0]["protected"]))
    ski = signer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert header["alg"] == "ES256" and header["kid"] == manifest.b64url(ski)
    assert payload["uniqueId"] == entries[0]["header"]["uniqueId"] == ids[0][1][2:]
    (jwk,) = payload["publicKeySet"]["keys"]
    device = x509.load_der_x509_certificate(base64.b64decode(jwk["x5c"][0]))
    assert device.public_bytes(serialization.Encoding.DER) == env["ledger"].certificate(1).der
    assert base64.b64decode(jwk["x5c"][1]) == env["signer"].ca.intermediate_cert.public_bytes(
        serialization.Encoding.DER
    )

    # The customer's side: an empty directory, the manifest and the signer certificate.
    box = tmp_path / "customer"
    box.mkdir()
    (box / "m.json").write_text(out.read_text())
    (box / "signer.pem").write_bytes(manifest.signer_file(settings).read_bytes())
    clean = {"PATH": os.environ["PATH"], "HOME": str(box)}
    ok = _cli("manifest", "verify", "m.json", "--signer", "signer.pem", cwd=box, env=clean)
    assert ok.returncode == 0 and "3 entries" in ok.stdout, ok.stderr

    def refused(doc: list[dict[str, Any]], signer_pem: str = "signer.pem") -> str:
        (box / "bad.json").write_text(json.dumps(doc))
        r = _cli("manifest", "verify", "bad.json", "--signer", signer_pem, cwd=box, env=clean)
        assert r.returncode == 1, r.stdout
        return r.stderr

    forged = json.loads(out.read_text())
    p = json.loads(manifest.unb64url(forged[1]["payload"]))
    p["uniqueId"] = "0123deadbeef0000ee"
    forged[1]["payload"] = manifest.b64url(json.dumps(p).encode())
    assert "entry 2" in refused(forged) and "does not verify" in refused(forged)
    swapped = json.loads(out.read_text())
    swapped[0]["signature"], swapped[2]["signature"] = (
        swapped[2]["signature"],
        swapped[0]["signature"],
    )
    assert "entry 1" in refused(swapped)
    relabelled = json.loads(out.read_text())
    relabelled[2]["header"]["uniqueId"] = "0123000000000000ee"
    assert "differs from the payload" in refused(relabelled)
    # A look-alike signer (same name, another key) is not the one the entries name.
    other = ec.generate_private_key(ec.SECP256R1())
    fake = (
        x509.CertificateBuilder()
        .subject_name(signer.subject)
        .issuer_name(signer.subject)
        .public_key(other.public_key())
        .serial_number(7)
        .not_valid_before(signer.not_valid_before_utc)
        .not_valid_after(signer.not_valid_after_utc)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(other.public_key()), False)
        .sign(other, hashes.SHA256())
    )
    (box / "other.pem").write_bytes(fake.public_bytes(serialization.Encoding.PEM))
    assert "not signed by this manifest signer" in refused(entries, "other.pem")
