"""Enrollment against the real app, CA (SoftHSM) and database: what a station receives, what
the line server records and audits, and every refusal."""

from __future__ import annotations

import hashlib
import json
import stat
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store
from sqlalchemy import text, update
from sqlmodel import Session, select

from provisioner.db.models import Station, StationEnrollment, StationIdentity
from provisioner.enrollment import identity
from provisioner.enrollment.service import EnrollmentAnswer, enroll_station, revoke_station
from provisioner.enrollment.tokens import REFUSED_MESSAGE, EnrollmentTokenError, add_station
from provisioner.errors import ConflictError
from tests.cloud.inprocess import served
from tests.enrollment.conftest import Line, csr_pem

ADMIN = "admin:ada"


def _events(line: Line, event_type: str) -> list[dict[str, Any]]:
    with line.engine.connect() as c:
        rows = c.execute(
            text("SELECT actor, station_id, payload FROM audit_event WHERE event_type = :t"),
            {"t": event_type},
        ).all()
    return [{"actor": a, "station": s, **json.loads(p)} for a, s, p in rows]


def _audit_dump(line: Line) -> str:
    with line.engine.connect() as c:
        return " ".join(str(r) for r in c.execute(text("SELECT * FROM audit_event")))


def _post(line: Line, token: str, csr: str) -> Any:
    return line.client.post("/stations/enroll", json={"token": token, "csr": csr})


def _verify_client(cert: x509.Certificate, chain: list[x509.Certificate]) -> None:
    intermediate, root = chain
    # WebPKI's client profile wants a SAN; a station is named by its CN, so allow none
    ee = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)
        .build_client_verifier()
    )
    verified = verifier.verify(cert, [intermediate])
    assert verified.chain[-1] == root


def test_add_enroll_gives_a_certificate_for_the_station_key(line: Line) -> None:
    token = add_station(line.engine, "line2", ADMIN)
    key, csr = csr_pem("line2")
    r = _post(line, token, csr)
    assert r.status_code == 201, r.text
    answer = EnrollmentAnswer.from_json(r.json())
    cert = x509.load_pem_x509_certificate(answer.certificate_pem.encode())
    chain = x509.load_pem_x509_certificates(answer.chain_pem.encode())
    # the station's own key, CN = station id, O of the profile, client auth only, a year
    assert cert.public_key() == key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "line2"
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert org == line.settings.profile.organization
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=365) <= life <= timedelta(days=365, minutes=6)
    assert cert.not_valid_before_utc <= datetime.now(UTC) - timedelta(minutes=4)
    # chains to the HSM root: the chain sent is intermediate + root of the CA on disk
    root = x509.load_pem_x509_certificate((line.settings.ca_dir / "root.pem").read_bytes())
    assert chain[1] == root
    _verify_client(cert, chain)
    # the line's certificate, from the same intermediate
    line_cert = x509.load_pem_x509_certificate(answer.line_certificate_pem.encode())
    assert line_cert == x509.load_pem_x509_certificate(
        (line.settings.line_identity_dir / "line.crt").read_bytes()
    )
    line_cert.verify_directly_issued_by(chain[0])
    assert (answer.broker_host, answer.broker_port, answer.broker_mode) == (
        line.settings.broker.host,
        line.settings.broker.port,
        line.settings.broker.mode,
    )
    # recorded: the identity, the password's hash only, the token spent
    with Session(line.engine) as s:
        ident = s.exec(select(StationIdentity)).one()
        station = s.get(Station, "line2")
        enrollment = s.exec(select(StationEnrollment)).one()
    assert ident.station_id == "line2" and ident.revoked_at is None
    assert ident.serial_number == format(cert.serial_number, "x")
    pw_hash = hashlib.sha256(answer.broker_password.encode()).hexdigest()
    assert station is not None and station.broker_password_sha256 == pw_hash
    assert enrollment.used_at is not None and enrollment.token_sha256 != token
    assert len(answer.broker_password) >= 43
    # audited, without the token or the password
    (added,) = _events(line, "station.added")
    (enrolled,) = _events(line, "station.enrolled")
    assert added["actor"] == ADMIN and added["station"] == "line2"
    assert enrolled["serial"] == ident.serial_number
    assert enrolled["fingerprint"] == ident.fingerprint_sha256
    assert enrolled["actor"] == "station:line2"
    dump = _audit_dump(line)
    assert token not in dump and answer.broker_password not in dump
    assert token.removeprefix("enr_") not in dump
    # the broker's users now include the station (sync_acl ran)
    acl = (line.settings.broker_dir / "users.acl").read_text()
    assert "st-line2" in acl and pw_hash in acl


def test_used_unknown_and_expired_tokens_get_the_same_401_audited(line: Line) -> None:
    token = add_station(line.engine, "line2", ADMIN)
    assert _post(line, token, csr_pem("line2")[1]).status_code == 201
    reused = _post(line, token, csr_pem("line2")[1])
    unknown = _post(line, "enr_" + "A" * 43, csr_pem("line2")[1])
    expiring = add_station(line.engine, "line3", ADMIN)
    with line.engine.begin() as c:
        c.execute(
            update(StationEnrollment)
            .where(StationEnrollment.station_id == "line3")  # type: ignore[arg-type]
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    expired = _post(line, expiring, csr_pem("line3")[1])
    for r in (reused, unknown, expired):
        assert r.status_code == 401, r.text
        assert r.json()["error"]["message"] == REFUSED_MESSAGE
    refusals = _events(line, "station.enroll_refused")
    assert [(e["reason"], e["station"]) for e in refusals] == [
        ("used", "line2"),
        ("unknown", None),
        ("expired", "line3"),
    ]
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert refusals[0]["token_hash"] == digest[:8]
    dump = _audit_dump(line)
    assert token not in dump and expiring not in dump
    with Session(line.engine) as s:  # nothing issued for the refused requests
        assert len(s.exec(select(StationIdentity)).all()) == 1


def _tampered(csr: str) -> str:
    """The CSR with one bit of its signature flipped: same key, no proof of possession."""
    der = bytearray(x509.load_pem_x509_csr(csr.encode()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    bad = x509.load_der_x509_csr(bytes(der))
    return bad.public_bytes(serialization.Encoding.PEM).decode()


def _csr_with(key: Any, cn: str = "line2") -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: _csr_with(rsa.generate_private_key(65537, 2048)), "RSA key"),
        (lambda: _csr_with(ec.generate_private_key(ec.SECP384R1())), "secp384r1"),
        (lambda: _tampered(csr_pem("line2")[1]), "proof of possession"),
        (lambda: csr_pem("line7")[1], "'line7'"),
        (lambda: "not a csr", "not a PEM"),
    ],
    ids=["rsa", "p384", "bad-signature", "other-station", "garbage"],
)
def test_a_bad_csr_gets_422_audited_and_leaves_the_token_usable(
    line: Line, make: Any, says: str
) -> None:
    token = add_station(line.engine, "line2", ADMIN)
    r = _post(line, token, make())
    assert r.status_code == 422, r.text
    assert says in r.json()["error"]["message"]
    (refusal,) = _events(line, "station.enroll_refused")
    assert refusal["reason"].startswith("bad CSR") and refusal["station"] == "line2"
    with Session(line.engine) as s:
        assert s.exec(select(StationIdentity)).all() == []
    # the station fixes its request and enrolls with the same token
    assert _post(line, token, csr_pem("line2")[1]).status_code == 201


def test_malformed_requests_do_not_echo_the_token(line: Line) -> None:
    token = add_station(line.engine, "line2", ADMIN)
    for body in ({"token": token}, {"token": token, "csr": 5}, [token]):
        r = line.client.post("/stations/enroll", json=body)
        assert r.status_code == 422 and token not in r.text


def test_no_line_identity_is_503_and_the_token_stays_usable(line: Line) -> None:
    token = add_station(line.engine, "line2", ADMIN)
    crt = line.settings.line_identity_dir / "line.crt"
    saved = crt.read_bytes()
    crt.unlink()
    r = _post(line, token, csr_pem("line2")[1])
    assert r.status_code == 503 and "provisioner line identity" in r.text
    crt.write_bytes(saved)
    assert _post(line, token, csr_pem("line2")[1]).status_code == 201


def test_adding_again_spends_the_older_token_and_reenrolling_replaces_the_identity(
    line: Line,
) -> None:
    first = add_station(line.engine, "line2", ADMIN)
    second = add_station(line.engine, "line2", ADMIN)
    assert _post(line, first, csr_pem("line2")[1]).status_code == 401
    old = _post(line, second, csr_pem("line2")[1]).json()
    # an enrolled station enrolls again only with a new token from `station add`
    assert _post(line, second, csr_pem("line2")[1]).status_code == 401
    third = add_station(line.engine, "line2", ADMIN)
    new = _post(line, third, csr_pem("line2")[1]).json()
    with Session(line.engine) as s:
        rows = {r.serial_number: r for r in s.exec(select(StationIdentity)).all()}
        station = s.get(Station, "line2")
    old_serial = format(
        x509.load_pem_x509_certificate(old["certificate_pem"].encode()).serial_number, "x"
    )
    assert rows[old_serial].revoked_at is not None  # the replaced PC's certificate
    assert [r.revoked_at for k, r in rows.items() if k != old_serial] == [None]
    assert station is not None
    assert (
        station.broker_password_sha256
        == hashlib.sha256(new["broker_password"].encode()).hexdigest()
    )
    (_, enrolled) = _events(line, "station.enrolled")
    assert enrolled["replaced"] == [old_serial]


def test_revoke_cuts_the_station_off(line: Line) -> None:
    token = add_station(line.engine, "line2", ADMIN)
    assert _post(line, token, csr_pem("line2")[1]).status_code == 201
    pending = add_station(line.engine, "line2", ADMIN)  # e.g. a token for a spare PC
    done = revoke_station(line.settings, line.engine, "line2", ADMIN)
    assert len(done.serials) == 1 and done.had_broker_user and done.cancelled_tokens == 1
    with Session(line.engine) as s:
        ident = s.exec(select(StationIdentity)).one()
        station = s.get(Station, "line2")
    assert ident.revoked_at is not None and ident.revoked_by == ADMIN
    assert station is not None and station.broker_password_sha256 is None
    assert "st-line2" not in (line.settings.broker_dir / "users.acl").read_text()
    (revoked,) = _events(line, "station.revoked")
    assert revoked["serials"] == done.serials and revoked["actor"] == ADMIN
    # the pending token no longer works; again: nothing left, still fine
    assert _post(line, pending, csr_pem("line2")[1]).status_code == 401
    again = revoke_station(line.settings, line.engine, "line2", ADMIN)
    assert again.serials == [] and not again.had_broker_user


def test_enroll_station_directly_raises_for_a_used_token(line: Line) -> None:
    token = add_station(line.engine, "line2", ADMIN)
    enroll_station(line.settings, line.engine, token, csr_pem("line2")[1].encode())
    with pytest.raises(EnrollmentTokenError) as err:
        enroll_station(line.settings, line.engine, token, csr_pem("line2")[1].encode())
    assert str(err.value) == REFUSED_MESSAGE and err.value.reason == "used"


def test_station_enroll_writes_its_identity_files(line: Line, tmp_path: Path) -> None:
    """The station side over a real HTTP server: key made locally, files and modes."""
    from provisioner.api.app import create_app
    from provisioner.settings import Settings

    pc = Settings(var_dir=tmp_path / "pc", role="station", station_id="line2")
    token = add_station(line.engine, "line2", ADMIN)
    with served(create_app(line.settings)) as port:
        url = f"http://127.0.0.1:{port}"
        folder = identity.enroll(pc, "line2", token, url)
        files = identity.StationIdentityFiles.of(pc)
        assert folder == files.dir == pc.station_identity_dir
        for path, mode in [
            (files.key_path, 0o600),
            (files.broker_password_path, 0o600),
            (files.certificate_path, 0o600),
            (files.chain_path, 0o600),
            (files.line_certificate_path, 0o600),
        ]:
            assert stat.S_IMODE(path.stat().st_mode) == mode, path
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        cert = files.certificate()
        assert cert.public_key() == files.key().public_key()
        _verify_client(cert, files.chain())
        assert files.line_certificate() == x509.load_pem_x509_certificate(
            (line.settings.line_identity_dir / "line.crt").read_bytes()
        )
        assert files.enrollment() == {
            "station_id": "line2",
            "broker_host": line.settings.broker.host,
            "broker_port": line.settings.broker.port,
            "broker_mode": line.settings.broker.mode,
        }
        with Session(line.engine) as s:
            station = s.get(Station, "line2")
        assert station is not None
        password = files.broker_password()
        assert station.broker_password_sha256 == hashlib.sha256(password.encode()).hexdigest()
        # an existing identity is kept unless --force
        again = add_station(line.engine, "line2", ADMIN)
        with pytest.raises(ConflictError, match="--force"):
            identity.enroll(pc, "line2", again, url)
        identity.enroll(pc, "line2", again, url, force=True)
        assert files.certificate() != cert and files.broker_password() != password


def test_concurrent_enrollments_all_succeed_and_one_token_wins_once(line: Line) -> None:
    """The API serves requests on a thread pool: several stations at once each get their
    certificate (one HSM login per process, shared safely), and two requests racing with
    one token get one certificate between them."""
    ids = [f"st{i}" for i in range(4)]
    toks = {sid: add_station(line.engine, sid, ADMIN) for sid in ids}
    shared = add_station(line.engine, "twice", ADMIN)
    jobs = [(toks[sid], sid) for sid in ids] + [(shared, "twice"), (shared, "twice")]
    with ThreadPoolExecutor(len(jobs)) as pool:
        codes = list(pool.map(lambda j: _post(line, j[0], csr_pem(j[1])[1]).status_code, jobs))
    assert codes[:4] == [201] * 4
    assert sorted(codes[4:]) == [201, 401]
    with Session(line.engine) as s:
        assert len(s.exec(select(StationIdentity)).all()) == 5
    assert [e["reason"] for e in _events(line, "station.enroll_refused")] == ["used"]
