"""The OCSP responder, asked by the `openssl ocsp` CLI, in the real API process
(``python -m provisioner.api``), signing in SoftHSM with its delegated responder key."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from provisioner import batches
from provisioner.ca import revocation
from provisioner.ca.ceremony import init_ca
from provisioner.db.engine import create_schema, make_engine
from provisioner.db.models import AuditEvent, Revocation
from provisioner.issuance import IssuanceService
from provisioner.ledger import DeviceLedger
from tests.conftest import Station, make_station, run_cli
from tests.core.test_issuance_policy import _ready_device


@dataclass(frozen=True)
class Served:
    station: Station
    engine: Engine
    url: str
    root: Path
    inter: Path
    devices: list[Path]  # PEM files of three issued device certificates
    chips: list[str]  # their chip serials
    dir: Path


def _pem(path: Path, der: bytes) -> Path:
    cert = x509.load_der_x509_certificate(der)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A CA in SoftHSM, three device certificates issued by the line's signer, and the API
    process serving /ocsp on a free port."""
    work = tmp_path_factory.mktemp("ocsp")
    st = make_station(work / "station")
    settings = st.settings
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", "/nonexistent")  # init_ca points it at the station's
        init_ca(settings)
        engine = make_engine(settings.db_url)
        create_schema(engine)
        batch_id = batches.create_batch(engine, settings, station_id="line1", count=3, actor="t")
        ledger = DeviceLedger(engine, "station:line1", "line1")
        reqs = [
            _ready_device(ledger, d, 60 + i)
            for i, d in enumerate(batches.mark_started(engine, batch_id, actor="t"))
        ]
        svc = IssuanceService.open(engine, settings)
        try:
            issued = [svc.sign(r) for r in reqs]
        finally:
            svc.close()
    devices = [_pem(work / f"dev{i}.pem", c.der) for i, c in enumerate(issued)]
    api = subprocess.Popen(
        [sys.executable, "-m", "provisioner.api"],
        env=st.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{settings.api.listen_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).is_success:
                    break
            except httpx.TransportError:
                pass
            assert api.poll() is None, api.stderr.read() if api.stderr else "API exited"
            assert time.monotonic() < deadline, "the API did not start within 30 s"
            time.sleep(0.1)
        yield Served(
            st,
            engine,
            base + "/ocsp",
            settings.ca_dir / "root.pem",
            settings.ca_dir / "intermediate.pem",
            devices,
            [r.chip_serial_hex for r in reqs],
            work,
        )
    finally:
        api.terminate()
        api.wait(10)


def _ocsp(sv: Served, *args: str) -> subprocess.CompletedProcess[str]:
    """``openssl ocsp`` against the responder, trusting only our root."""
    cmd = ["openssl", "ocsp", "-url", sv.url, "-CAfile", str(sv.root), "-resp_text", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def _nonces(text: str) -> list[str]:
    """The nonce values in -req_text / -resp_text output (hex after the OCTET STRING tag)."""
    return [m.replace(":", "") for m in re.findall(r"OCSP Nonce: *\n *([0-9A-F:]+)", text)]


def test_good_with_the_nonce_echoed_and_signed_fresh(served: Served) -> None:
    outs = []
    for n in range(2):
        out = _ocsp(
            served,
            "-issuer",
            str(served.inter),
            "-cert",
            str(served.devices[0]),
            "-req_text",
            "-respout",
            str(served.dir / f"nonce{n}.der"),
        )
        assert out.returncode == 0, out.stderr
        assert f"{served.devices[0]}: good" in out.stdout
        assert "Response verify OK" in out.stderr
        assert "nonce" not in out.stderr.lower()  # no "WARNING: no nonce in response"
        request_nonce, response_nonce = _nonces(out.stdout)
        assert request_nonce == response_nonce and len(request_nonce) >= 32
        # signed by the delegated responder, whose certificate travels in the response
        assert "CN=OCSP intermediate-ca" in out.stdout and "OCSP Signing" in out.stdout
        outs.append((served.dir / f"nonce{n}.der").read_bytes())
    assert outs[0] != outs[1]  # each nonce answered with its own signature


def test_without_a_nonce_the_pre_produced_answer(served: Served) -> None:
    ders = []
    for n in range(2):
        out = _ocsp(
            served,
            "-no_nonce",
            "-issuer",
            str(served.inter),
            "-cert",
            str(served.devices[2]),
            "-respout",
            str(served.dir / f"plain{n}.der"),
            "-reqout",
            str(served.dir / "plain.req"),
        )
        assert out.returncode == 0, out.stderr
        assert f"{served.devices[2]}: good" in out.stdout
        assert "Response verify OK" in out.stderr
        assert "OCSP Nonce" not in out.stdout
        ders.append((served.dir / f"plain{n}.der").read_bytes())
    # ECDSA signatures are randomised: identical bytes mean the same signed answer
    assert ders[0] == ders[1]
    # GET with the base64 request in the path (RFC 6960 A.1) gets it too, cacheable
    req = (served.dir / "plain.req").read_bytes()
    encoded = httpx.URL(served.url + "/").join(
        base64.b64encode(req).decode().replace("/", "%2F").replace("+", "%2B")
    )
    got = httpx.get(encoded, timeout=10)
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/ocsp-response"
    assert got.content == ders[0]
    assert "max-age=" in got.headers["cache-control"] and got.headers["etag"]


def test_revoked_with_reason_and_time_at_once(served: Served) -> None:
    args = ["-no_nonce", "-issuer", str(served.inter), "-cert", str(served.devices[1])]
    before = _ocsp(served, *args)
    assert before.returncode == 0, before.stderr
    assert f"{served.devices[1]}: good" in before.stdout  # and now pre-produced as good
    revocation.revoke(served.engine, served.chips[1], "key_compromise", "admin:test")
    with Session(served.engine) as s:
        rev = s.exec(select(Revocation)).one()
    after = _ocsp(served, *args)
    assert after.returncode == 0, after.stderr
    assert "Response verify OK" in after.stderr
    assert f"{served.devices[1]}: revoked" in after.stdout
    assert "Reason: keyCompromise" in after.stdout
    when = rev.revoked_at.strftime("%b %e %H:%M:%S %Y GMT")
    assert f"Revocation Time: {when}" in after.stdout
    with_nonce = _ocsp(served, "-issuer", str(served.inter), "-cert", str(served.devices[1]))
    assert f"{served.devices[1]}: revoked" in with_nonce.stdout


def test_unknown_serial_and_unknown_issuer(served: Served) -> None:
    out = _ocsp(served, "-issuer", str(served.inter), "-serial", "0x1234567890abcdef")
    assert out.returncode == 0, out.stderr
    assert "0x1234567890abcdef: unknown" in out.stdout
    assert "Response verify OK" in out.stderr
    # the root's certificates are not ours to answer for: unauthorized, unsigned
    theirs = _ocsp(served, "-issuer", str(served.root), "-cert", str(served.inter))
    assert "unauthorized (6)" in theirs.stdout + theirs.stderr


def test_malformed_requests(served: Served) -> None:
    two = served.dir / "two.req"  # two certificates in one request: one is all we answer
    cmd = ["openssl", "ocsp", "-issuer", str(served.inter), "-serial", "5", "-serial", "6"]
    subprocess.run([*cmd, "-no_nonce", "-reqout", str(two)], check=True, capture_output=True)
    for response in (
        httpx.post(served.url, content=two.read_bytes(), timeout=10),
        httpx.post(served.url, content=b"\x30\x03junk", timeout=10),
        httpx.post(served.url, content=b"\x30" * 20_000, timeout=10),
        httpx.get(served.url + "/bm90IGFuIG9jc3AgcmVxdWVzdA", timeout=10),
        httpx.get(served.url + "/%25%25%25", timeout=10),
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/ocsp-response"
        assert response.headers["cache-control"] == "no-store"
        parsed = ocsp.load_der_ocsp_response(response.content)
        assert parsed.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_cli_shows_the_responder_the_api_signs_with(served: Served) -> None:
    out = _ocsp(served, "-issuer", str(served.inter), "-serial", "77")
    assert out.returncode == 0, out.stderr
    signer = re.search(r"Responder Id: ([0-9A-F]+)", out.stdout)
    assert signer is not None
    done = run_cli("ocsp", "responders", "--json", env=served.station.env())
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["ca"] == "intermediate-ca" and row["key"] == "ocsp-intermediate-ca"
    assert row["issued"] is False  # the API issued it on its first signature
    cert = x509.load_pem_x509_certificate(Path(row["path"]).read_bytes())
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ski.hex().upper() == signer.group(1)  # the responder id is its key hash
    with Session(served.engine) as s:
        issued = s.exec(
            select(AuditEvent).where(AuditEvent.event_type == "ca.ocsp_responder_issued")
        ).all()
    assert [e.actor for e in issued] == ["ocsp-responder"]


def test_the_ocsp_url_in_the_device_certificate_reaches_the_responder(served: Served) -> None:
    """Device certificates name the responder in their authorityInfoAccess (by default,
    ``<api url>/ocsp``): openssl finds it there, with no -url."""
    uri = subprocess.run(
        ["openssl", "x509", "-in", str(served.devices[0]), "-noout", "-ocsp_uri"],
        capture_output=True,
        text=True,
    )
    assert uri.stdout.strip() == served.url
    cmd = ["openssl", "ocsp", "-issuer", str(served.inter), "-cert", str(served.devices[0])]
    cmd += ["-url", uri.stdout.strip(), "-CAfile", str(served.root)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert f"{served.devices[0]}: good" in out.stdout and "Response verify OK" in out.stderr
