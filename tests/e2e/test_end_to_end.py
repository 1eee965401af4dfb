"""The walking skeleton, end to end, through real processes.

Real redis-server, real Celery worker processes (station, hsm, registry), SoftHSM through
p11-kit, the unmodified cryptoauthlib driving emulated chips, the built-in registry over
HTTP, and the ``provisioner`` CLI as an operator runs it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from provisioner.audit import triggers
from provisioner.cli.services import wait_for_checkpoint
from provisioner.cloud.tokens import read_token
from provisioner.db.engine import make_engine
from provisioner.supervisor import Supervisor, running_services
from tests.conftest import Station, make_station, run_cli

N_CHIPS = 8


def cli(st: Station, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = run_cli(*args, env=st.env(), timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"provisioner {args} failed ({proc.returncode}): {proc.stderr}")
    return proc


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)],
)
def provisioned(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Station, dict, Supervisor]]:
    """The whole line once per database: SQLite (default) and a real PostgreSQL server."""
    database_url = None
    if request.param == "postgresql":
        from tests import pg

        database_url = pg.create_database(request.getfixturevalue("postgres_url"))
    st = make_station(tmp_path_factory.mktemp("e2e") / "station", database_url=database_url)
    cli(st, "ca", "init")  # in a child: PKCS#11 state stays out of pytest
    with running_services(st.settings, ["line1"], st.config) as sup:
        created = json.loads(
            cli(
                st, "batch", "create", "--count", str(N_CHIPS), "--station", "line1", "--json"
            ).stdout
        )
        started = json.loads(
            cli(st, "batch", "start", str(created["id"]), "--json", "--timeout", "300").stdout
        )
        assert started["done"] == N_CHIPS, started  # `batch start` ends with the summary
        report = json.loads(
            cli(st, "batch", "status", str(created["id"]), "--devices", "--json").stdout
        )
        yield st, report, sup


def _registry_devices(st: Station) -> dict[str, dict]:
    r = st.settings.registry
    token = read_token(st.settings.registry_token_file)
    resp = httpx.get(
        f"{st.settings.registry_url}/v1/projects/{r.project}/locations/{r.location}"
        f"/registries/{r.registry}/devices",
        headers={"Authorization": f"Bearer {token}"},
        params={"pageSize": 1000, "fieldMask": "credentials"},
        timeout=10,
    )
    resp.raise_for_status()
    return {d["id"]: d for d in resp.json().get("devices", [])}


def _certificates(st: Station) -> dict[int, bytes]:
    with make_engine(st.settings.db_url).connect() as c:
        rows = c.execute(text("SELECT device_id, der FROM certificate"))
        return {r.device_id: r.der for r in rows}


def test_every_chip_is_provisioned(provisioned: tuple[Station, dict, Supervisor]) -> None:
    _, report, _ = provisioned
    assert report["state"] == "finished", report
    assert report["done"] == N_CHIPS and report["failed"] == 0
    serials = [d["chip_serial"] for d in report["devices"]]
    assert len(set(serials)) == N_CHIPS and all(s and len(s) == 18 for s in serials)


def test_certificates_verify_and_match_the_chips(
    provisioned: tuple[Station, dict, Supervisor],
) -> None:
    from provisioner.chips.connector import Connector
    from provisioner.settings import StationSettings

    st, report, _ = provisioned
    intermediate = x509.load_pem_x509_certificate(
        (st.settings.ca_dir / "intermediate.pem").read_bytes()
    )
    engine = make_engine(st.settings.db_url)
    with engine.connect() as c:
        ders = {
            row.device_id: row.der
            for row in c.execute(text("SELECT device_id, der FROM certificate"))
        }
    assert len(ders) == N_CHIPS
    # An inspection jig (not the station's) to put each chip back in a socket.
    inspect = StationSettings(sockets=1)
    stations = {**st.settings.stations, "inspect": inspect}
    connector = Connector(st.settings.model_copy(update={"stations": stations}))
    jig = connector.jig("inspect")
    for dev in report["devices"]:
        cert = x509.load_der_x509_certificate(ders[dev["device_id"]])
        cert.verify_directly_issued_by(intermediate)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == dev["chip_serial"]
        jig.insert(0, jig.pool_path(dev["chip_serial"]))
        chip = connector.open("emulated:inspect/0")
        try:
            chip_point = b"\x04" + chip.public_key()  # atcab_get_pubkey_ext on the chip
            assert chip.identity().serial_hex == dev["chip_serial"]
            assert chip.read_certificate() == ders[dev["device_id"]]  # rebuilt from 72 bytes
            assert chip.read_signer_certificate() == intermediate.public_bytes(
                serialization.Encoding.DER
            )
        finally:
            chip.close()
        cert_point = cert.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        assert cert_point == chip_point


def test_registry_holds_exactly_those_devices(
    provisioned: tuple[Station, dict, Supervisor],
) -> None:
    st, report, _ = provisioned
    held = _registry_devices(st)
    expected = {"sn" + d["chip_serial"].lower(): d for d in report["devices"]}
    assert set(held) == set(expected)
    engine = make_engine(st.settings.db_url)
    with engine.connect() as c:
        by_dev = {
            r.device_id: r.der for r in c.execute(text("SELECT device_id, der FROM certificate"))
        }
    for reg_id, dev in expected.items():
        creds = held[reg_id]["credentials"]
        assert len(creds) == 1
        pem = creds[0]["publicKey"]["key"]
        got = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
        assert got == by_dev[dev["device_id"]]
        assert held[reg_id]["numId"] == dev["num_id"]


def test_audit_events_name_actor_role_station_and_socket(
    provisioned: tuple[Station, dict, Supervisor],
) -> None:
    st, _, _ = provisioned
    with make_engine(st.settings.db_url).connect() as c:
        rows = c.execute(
            text(
                "SELECT actor, role, station_id, socket FROM audit_event "
                "WHERE event_type IN ('device.identified', 'device.key_generated', "
                "'device.pop_verified', 'device.cert_written', 'device.cert_verified')"
            )
        ).all()
    assert len(rows) == N_CHIPS * 5
    assert {(a, r, s) for a, r, s, _ in rows} == {("station:line1", "station", "line1")}
    sockets = {sock for *_, sock in rows}
    assert sockets and sockets <= set(range(4))  # the jig's sockets (0..3), never unknown


def test_audit_verify_then_tamper(provisioned: tuple[Station, dict, Supervisor]) -> None:
    st, _, _ = provisioned
    engine = make_engine(st.settings.db_url)
    # The signer worker signs a checkpoint (audit key in the HSM) at the batch end.
    assert wait_for_checkpoint(engine, 1, timeout_s=30) is not None
    ok = json.loads(cli(st, "audit", "verify", "--json").stdout)
    assert ok["ok"] and ok["events"] >= N_CHIPS * 7 and ok["checkpoints_verified"] >= 1
    with engine.begin() as c:
        seq = c.execute(
            text("SELECT min(seq) FROM audit_event WHERE event_type = 'device.cert_issued'")
        ).scalar_one()
    with pytest.raises(DatabaseError, match="append-only"), engine.begin() as c:
        c.execute(text("UPDATE audit_event SET actor = 'mallory' WHERE seq = :s"), {"s": seq})
    with engine.begin() as c:  # an insider drops the trigger first
        triggers.drop(c)
        c.execute(text("UPDATE audit_event SET actor = 'mallory' WHERE seq = :s"), {"s": seq})
        triggers.install(c)
    bad = cli(st, "audit", "verify", check=False)
    assert bad.returncode == 1
    assert f"BROKEN at event {seq}" in bad.stderr
    assert (
        json.loads(cli(st, "audit", "verify", "--json", check=False).stdout)["first_bad_seq"] == seq
    )


def test_no_secret_in_logs_or_audit(provisioned: tuple[Station, dict, Supervisor]) -> None:
    st, _, _ = provisioned
    s = st.settings
    secrets = [
        p.read_text().strip()
        for p in (
            s.pin_file,
            s.root_pin_file,
            s.pin_file.with_suffix(".so-pin"),
            s.root_pin_file.with_suffix(".so-pin"),
            s.registry_token_file,
        )
    ]
    # User tokens: made by the bootstrap admin, then used, allowed and refused.
    tokens = st.root / "tokens"
    tokens.mkdir(exist_ok=True)
    cli(st, "users", "add", "ada", "--role", "admin", "--token-out", str(tokens / "ada"))
    for name, role in (("olga", "operator"), ("aude", "auditor")):
        as_ada = ("--token-file", str(tokens / "ada"))
        cli(st, *as_ada, "users", "add", name, "--role", role, "--token-out", str(tokens / name))
    secrets += [(tokens / n).read_text().strip() for n in ("ada", "olga", "aude")]
    for name, args in (("aude", ["audit", "query", "--limit", "3"]), ("olga", ["ca", "show"])):
        cli(st, "--token-file", str(tokens / name), *args, check=False)
    assert all(len(x) >= 16 for x in secrets)
    haystacks = [p.read_text(errors="replace") for p in (s.var / "log").glob("*") if p.is_file()]
    with make_engine(s.db_url).connect() as c:
        haystacks += [
            " ".join(str(v) for v in row) for row in c.execute(text("SELECT * FROM audit_event"))
        ]
        haystacks += [
            " ".join(str(v) for v in row)
            for row in c.execute(text("SELECT * FROM audit_checkpoint"))
        ]
        haystacks += [
            " ".join(str(v) for v in row) for row in c.execute(text("SELECT * FROM api_token"))
        ]
        events = {r[0] for r in c.execute(text("SELECT event_type FROM audit_event"))}
    assert {"auth.login", "auth.denied", "user.created"} <= events
    assert haystacks
    for secret in secrets:
        assert not any(secret in h for h in haystacks)
