"""The batch's mode travels with the device: the gateway's answer to ``load`` carries the
batch's mode and part, so a station attempt no longer asks ``batch_mode`` in a round trip
of its own, in either mode. The line still decides: each mode's operations stay refused for
the other's devices (``wrong_mode``).

Through the real gateway in process (signed requests and answers, as on a station PC,
without the broker), real emulated chips through cryptoauthlib, the real database and the
SoftHSM signer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from provisioner import batches
from provisioner.ca.ceremony import init_ca, load_ca
from provisioner.ca.chain import local_material
from provisioner.ca.manufacturer_chain import load_root
from provisioner.chips.connector import Connector
from provisioner.chips.emulator.manufacturer import EmulatedManufacturer
from provisioner.chips.emulator.tray import trust_and_go
from provisioner.db.engine import create_schema, make_engine
from provisioner.db.models import BatchMode
from provisioner.enrollment.service import init_line_identity
from provisioner.errors import LinkRefusedError
from provisioner.issuance import IssuanceService
from provisioner.link.gateway import Gateway
from provisioner.link.keys import line_key
from provisioner.link.remote import RemoteRecords
from provisioner.settings import Settings, StationSettings
from provisioner.socket_task import SocketRun
from tests.link.stations import enroll

REGISTRY = "projects/p/locations/l/registries/r"


@pytest.fixture(scope="module")
def manufacturer() -> EmulatedManufacturer:
    return EmulatedManufacturer.create()


@pytest.fixture
def link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manufacturer: EmulatedManufacturer
) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent")
    settings = Settings(
        var_dir=tmp_path / "var",
        stations={"line1": StationSettings(sockets=1, feed="manual")},
    )
    settings.manufacturer_root_file.parent.mkdir(parents=True)
    settings.manufacturer_root_file.write_bytes(manufacturer.root_pem())
    init_ca(settings)
    engine = make_engine(settings.db_url)
    create_schema(engine)
    init_line_identity(settings)
    key = enroll(settings, engine, "line1")
    ca = load_ca(settings)
    gateway = Gateway(
        engine,
        "line1",
        line_key(settings),
        IssuanceService(engine, ca, settings.profile),
        registry=REGISTRY,
        chain_material=lambda: local_material(settings).as_json(),
        manufacturer_root=lambda: load_root(settings.manufacturer_root_file),
    )
    ops: list[str] = []

    def send(request: dict[str, Any], _timeout: float) -> object:
        ops.append(request["body"]["op"])
        return gateway.handle(request)

    line_cert = x509.load_pem_x509_certificate(
        (settings.line_identity_dir / "line.crt").read_bytes()
    )
    remote = RemoteRecords(send, key, line_cert, 0, timeout_s=5, sign_timeout_s=5)
    yield {
        "settings": settings,
        "engine": engine,
        "remote": remote,
        "ops": ops,
        "line_cert": line_cert,
        "send": send,
        "key": key,
        "jig": Connector(settings).jig("line1"),
    }
    ca.close()


def _device(link: dict[str, Any], mode: str) -> int:
    bid = batches.create_batch(
        link["engine"],
        link["settings"],
        station_id="line1",
        count=1,
        actor="t",
        mode=mode,
        part="trust-and-go" if mode == "preprovisioned" else None,
    )
    (device_id,) = batches.mark_started(link["engine"], bid, actor="t")
    return device_id


def _run(link: dict[str, Any], device_id: int) -> str:
    run = SocketRun(link["settings"], "line1", 0, link["remote"], holder=f"line1:0:{os.getpid()}")
    return run.run(device_id).kind


def test_an_issue_device_is_provisioned_without_a_batch_mode_round_trip(
    link: dict[str, Any],
) -> None:
    device_id = _device(link, "issue")
    link["jig"].insert_blank(0)
    assert _run(link, device_id) == "done"
    assert "sign" in link["ops"] and "record_verified" in link["ops"]
    assert "batch_mode" not in link["ops"]


def test_a_device_costs_one_claim_and_no_reload_of_its_own(link: dict[str, Any]) -> None:
    """The round trips of one new device through the link (each a signed request, a nonce
    and the line's transactions): the first attempt follows the claim itself, so the lease
    is not renewed at once, and the device is not loaded again just to count its tries."""
    device_id = _device(link, "issue")
    link["jig"].insert_blank(0)
    assert _run(link, device_id) == "done"
    ops = link["ops"]
    assert ops.count("claim") == 1
    assert ops.count("load") == 3  # the task's, the attempt's, the pipeline's
    per_device = [op for op in ops if op != "chip_chain"]  # chain: once per socket's worker
    assert len(per_device) == 21, ops  # was 24: batch_mode, a second claim and a load went


def test_a_preprovisioned_part_is_provisioned_without_a_batch_mode_round_trip(
    link: dict[str, Any], manufacturer: EmulatedManufacturer
) -> None:
    device_id = _device(link, "preprovisioned")
    link["jig"].insert_chip(0, trust_and_go(manufacturer))
    assert _run(link, device_id) == "done"
    assert "record_factory" in link["ops"] and "accept_factory" in link["ops"]
    assert "batch_mode" not in link["ops"]


def test_the_load_answer_names_the_mode_and_part(link: dict[str, Any]) -> None:
    issue, part = _device(link, "issue"), _device(link, "preprovisioned")
    remote: RemoteRecords = link["remote"]
    remote.load(issue)
    remote.load(part)
    assert link["ops"] == ["load", "load"]
    assert remote.batch_mode(part) == (BatchMode.PREPROVISIONED, "trust-and-go")
    assert link["ops"] == ["load", "load"]  # the last device loaded: no round trip
    # another device than the last loaded one is asked of the line (the op stays served)
    assert remote.batch_mode(issue) == (BatchMode.ISSUE, None)
    assert link["ops"][-1] == "batch_mode"


def test_the_line_still_refuses_the_other_modes_operations(link: dict[str, Any]) -> None:
    """A station that ignores the mode it was told is refused by the gateway all the same."""
    device_id = _device(link, "preprovisioned")
    remote: RemoteRecords = link["remote"]
    remote.identify(device_id, "0123" + "AB" * 6 + "EE", "00006002", "emulated:line1/0")
    with pytest.raises(LinkRefusedError) as err:
        remote.record_key(device_id, b"\x04" + bytes(64))
    assert err.value.reason == "wrong_mode"
